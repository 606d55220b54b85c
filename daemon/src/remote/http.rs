//! `HttpRemote`: placeholder until the HTTP client lands.
