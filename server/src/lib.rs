//! The blob server (see ARCHITECTURE.md).
