//! What is inside a payload file: blob format v1 ([docs/blob-format.md](../../docs/blob-format.md)),
//! byte for byte the copy the server holds (the same salt), so an upload sends the file as it
//! is and a download keeps the bytes it verified. This module is the one place that seals
//! plaintext into a payload or opens one ([docs/local-store.md](../../docs/local-store.md)):
//!
//! - [`Sealer`]: sans-IO, plaintext in, sealed segments out (a streamed put);
//! - [`seal_file`]: a plaintext `Read` into a payload file, hashing it (a put by path, the
//!   migration of a plaintext payload left by the previous release);
//! - [`PlainSource`]: a payload opened for reading plaintext, ranges included (Get); it never
//!   hands out a byte of a segment that did not authenticate;
//! - [`authenticate`]: re-checks a payload without writing plaintext anywhere (verify, a
//!   rebuilt store, an upload's own check);
//! - [`reseal`]: the same plaintext under a fresh salt (a re-upload after the server lost a
//!   blob: a salt is never used for two encodings).
//!
//! Plaintext exists only in memory, one segment at a time. Blocking file I/O: callers run it
//! on the blocking pool.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use blobsync_shared::codec::{
    CodecError, DecryptWriter, Encoder, Header, InvalidBlob, MAX_HEADER_LEN, StorageKey,
};
use blobsync_shared::{BlobId, Namespace};

/// Plaintext in, sealed segments out, for a header whose plaintext size is known up front.
pub struct Sealer {
    enc: Encoder,
    /// Plaintext of the segment being filled.
    buf: Vec<u8>,
    /// Plaintext taken so far.
    taken: u64,
    header_out: bool,
    /// `None` when the caller hashes the plaintext itself ([`seal_file`] on another thread).
    sha: Option<ring::digest::Context>,
}

impl Sealer {
    /// Seals under `header` (its salt, size, names and segment size).
    pub fn new(key: &StorageKey, header: Header) -> Self {
        let mut s = Self::unhashed(key, header);
        s.sha = Some(ring::digest::Context::new(&ring::digest::SHA256));
        s
    }

    /// A sealer that leaves hashing the plaintext to its caller.
    fn unhashed(key: &StorageKey, header: Header) -> Self {
        Self {
            enc: Encoder::new(key, header),
            buf: Vec::new(),
            taken: 0,
            header_out: false,
            sha: None,
        }
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        self.enc.header()
    }

    /// Plaintext bytes taken so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Takes plaintext and appends to `out` the stored bytes it completes (the header first).
    /// More plaintext than the header announced is an `InvalidInput` error.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.header_into(out);
        while !data.is_empty() {
            let Some(n) = self.enc.next_plain_len() else {
                return Err(self.size_error(self.taken + data.len() as u64));
            };
            let take = (n - self.buf.len()).min(data.len());
            if let Some(sha) = self.sha.as_mut() {
                sha.update(&data[..take]);
            }
            self.taken += take as u64;
            if self.buf.is_empty() && take == n {
                // A whole segment at hand: seal it from `data`, saving a copy per byte.
                self.enc
                    .seal_next(&data[..n], out)
                    .map_err(io::Error::other)?;
            } else {
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() == n {
                    self.seal_buf(out)?;
                }
            }
            data = &data[take..];
        }
        Ok(())
    }

    /// Ends the blob: appends what is left (the last segment; the only one of an empty blob)
    /// and returns the plaintext's SHA-256. Less plaintext than announced is `InvalidInput`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> io::Result<[u8; 32]> {
        self.finish_segments(out)?;
        let sha = self
            .sha
            .take()
            .expect("Sealer::new hashes; only seal_file makes an unhashed one");
        Ok(digest32(sha))
    }

    /// Appends the last segment (see [`Sealer::finish`]), leaving the hash to the caller.
    fn finish_segments(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.header_into(out);
        if let Some(n) = self.enc.next_plain_len() {
            if self.buf.len() != n || self.enc.next_segment() + 1 < self.header().segment_count() {
                return Err(self.size_error(self.taken));
            }
            self.seal_buf(out)?;
        }
        Ok(())
    }

    fn header_into(&mut self, out: &mut Vec<u8>) {
        if !self.header_out {
            out.extend_from_slice(self.enc.header_bytes());
            self.header_out = true;
        }
    }

    fn seal_buf(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let r = self.enc.seal_next(&self.buf, out);
        self.buf.clear();
        r.map_err(io::Error::other)
    }

    fn size_error(&self, actual: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{actual} bytes arrived where {} were announced; nothing was stored",
                self.header().plain_size
            ),
        )
    }
}

/// Plaintext size from which [`seal_file`] hashes on a second thread: below it the thread
/// would cost more than it saves.
const HASH_THREAD_MIN: u64 = 4 << 20;

/// Buffers a big [`seal_file`] has in flight from its reader to its hasher, and as many to
/// its writer: bounds its memory to a few read buffers each way.
const HASH_BUFFERS: usize = 4;

/// Blocking: seals all of `plain` (exactly `header.plain_size` bytes, else `InvalidInput`)
/// into `out`, calling `wrote(out, n)` after each write (write-behind) and `stop()` before
/// each read (a cancelled put). Returns the plaintext's SHA-256.
///
/// A big file is hashed on a second thread and written on a third while this one reads and
/// seals: SHA-256 costs more than AES-GCM here, and a big put would otherwise keep one core
/// busy (or wait for the disk) while the other idles (issue 20, W6).
pub fn seal_file<R: Read, W: Write + Send>(
    key: &StorageKey,
    header: Header,
    plain: &mut R,
    out: &mut W,
    mut wrote: impl FnMut(&mut W, usize) -> io::Result<()> + Send,
    stop: impl Fn() -> bool,
) -> io::Result<[u8; 32]> {
    // Sized to the file (within 4 KiB..256 KiB): most puts are small, and zeroing and
    // freeing 256 KiB for each 1 KB file cost more than sealing it.
    let cap = header.plain_size.clamp(4096, 256 * 1024) as usize;
    if header.plain_size < HASH_THREAD_MIN {
        let mut sealer = Sealer::new(key, header);
        let mut buf = vec![0u8; cap];
        let mut sealed = Vec::with_capacity(buf.len() + 4096);
        loop {
            let n = read_plain(plain, &mut buf, &stop)?;
            if n == 0 {
                break;
            }
            sealer.push(&buf[..n], &mut sealed)?;
            write_sealed(out, &mut sealed, &mut wrote)?;
        }
        let sha = sealer.finish(&mut sealed)?;
        write_sealed(out, &mut sealed, &mut wrote)?;
        return Ok(sha);
    }
    // A sealed message holds at least a read's worth, or one whole segment when segments are
    // bigger than a read (up to 16 MiB): fewer of those wait for the writer.
    let segment = usize::try_from(header.segment_size()).unwrap_or(usize::MAX);
    let write_depth = (HASH_BUFFERS * cap / segment.max(cap)).max(1);
    let mut sealer = Sealer::unhashed(key, header);
    std::thread::scope(|s| {
        let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(HASH_BUFFERS);
        let (back_tx, back) = std::sync::mpsc::channel::<Vec<u8>>();
        let hasher = std::thread::Builder::new()
            .name("blobsyncd-hash".into())
            .spawn_scoped(s, move || {
                let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
                for (buf, n) in hash_rx {
                    sha.update(&buf[..n]);
                    // The reader may be gone (an error): then the buffer is just freed.
                    let _ = back_tx.send(buf);
                }
                digest32(sha)
            })?;
        // The writes (and write-behind's waits for the disk) on a third thread, so reading
        // and sealing the next chunk never waits for the disk.
        let (to_write, write_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(write_depth);
        let (wback_tx, wback) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("blobsyncd-write".into())
            .spawn_scoped(s, move || -> io::Result<()> {
                for mut sealed in write_rx {
                    write_sealed(out, &mut sealed, &mut wrote)?;
                    let _ = wback_tx.send(sealed);
                }
                Ok(())
            })?;
        let sealed_all = (|| -> io::Result<()> {
            let mut made = 0;
            loop {
                // A buffer the hasher is done with, or a new one while fewer than
                // HASH_BUFFERS exist.
                let mut buf = match back.try_recv() {
                    Ok(b) => b,
                    Err(_) if made < HASH_BUFFERS => {
                        made += 1;
                        vec![0u8; cap]
                    }
                    Err(_) => back.recv().map_err(|_| helper_gone())?,
                };
                let n = read_plain(plain, &mut buf, &stop)?;
                let mut sealed = wback
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(cap + 4096));
                if n == 0 {
                    sealer.finish_segments(&mut sealed)?;
                    return to_write.send(sealed).map_err(|_| helper_gone());
                }
                // Sealed first, then handed over: the hasher gets the same bytes, and owns
                // them until it gives the buffer back.
                sealer.push(&buf[..n], &mut sealed)?;
                to_hash.send((buf, n)).map_err(|_| helper_gone())?;
                if !sealed.is_empty() {
                    to_write.send(sealed).map_err(|_| helper_gone())?;
                }
            }
        })();
        // Closing the channels ends both helpers, on success and on error alike.
        drop(to_hash);
        drop(to_write);
        let written = writer.join().map_err(|_| helper_gone())?;
        let sha = hasher.join().map_err(|_| helper_gone());
        // A failed write is the cause when this thread only saw the writer go.
        written?;
        sealed_all?;
        sha
    })
}

/// Blocking: reads the next plaintext into `buf` (checking `stop` first); 0 at the end.
fn read_plain<R: Read>(
    plain: &mut R,
    buf: &mut [u8],
    stop: &impl Fn() -> bool,
) -> io::Result<usize> {
    if stop() {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the caller cancelled the put; nothing was stored",
        ));
    }
    loop {
        match plain.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io::Error::new(e.kind(), SourceError(e))),
            Ok(n) => return Ok(n),
        }
    }
}

fn write_sealed<W: Write>(
    out: &mut W,
    sealed: &mut Vec<u8>,
    wrote: &mut impl FnMut(&mut W, usize) -> io::Result<()>,
) -> io::Result<()> {
    if !sealed.is_empty() {
        out.write_all(sealed)?;
        wrote(out, sealed.len())?;
        sealed.clear();
    }
    Ok(())
}

fn helper_gone() -> io::Error {
    io::Error::other("a helper thread of the put stopped; nothing was stored")
}

fn digest32(sha: ring::digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(sha.finish().as_ref());
    out
}

/// A read error of the plaintext source (not of the payload): the caller names the source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub io::Error);

/// Whether an error of [`seal_file`] came from reading the source.
pub fn is_source_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<SourceError>())
}

/// A payload opened for reading its plaintext: the file, and its header checked against the
/// blob it must be (or a plaintext payload of the previous release, not yet converted).
pub struct PlainSource {
    file: File,
    key: StorageKey,
    ns: Namespace,
    id: BlobId,
    /// `None`: a plaintext payload awaiting migration (its bytes are the plaintext).
    header: Option<Header>,
    plain_size: u64,
}

impl PlainSource {
    /// Blocking: opens `path`, the payload of a blob of `size` plaintext bytes. `listed`: the
    /// store still lists it as a plaintext payload of an earlier release (`plain_payloads`);
    /// then a file of exactly `size` bytes is that plaintext (see [`is_plain_len`]). Any other
    /// must be sealed, its header naming `ns`/`id` and `size`: a sealed payload cut to its
    /// plaintext's length by damage is never mistaken for plaintext once the migration is past.
    pub fn open(
        key: &StorageKey,
        path: &Path,
        ns: &Namespace,
        id: &BlobId,
        size: u64,
        listed: bool,
    ) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let (header, plain_size) = if listed && is_plain_len(file.metadata()?.len(), size) {
            (None, size)
        } else {
            let h = read_header(&mut file, ns, id).map_err(codec_io)?;
            if h.plain_size != size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the payload's header says {} bytes, the store {size}: damaged on disk",
                        h.plain_size
                    ),
                ));
            }
            (Some(h), size)
        };
        Ok(Self {
            file,
            key: key.clone(),
            ns: ns.clone(),
            id: id.clone(),
            header,
            plain_size,
        })
    }

    /// The plaintext size the payload's header gives.
    pub fn plain_size(&self) -> u64 {
        self.plain_size
    }

    /// The payload's header (`None` for a plaintext payload awaiting migration).
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Blocking: writes plaintext `range` to `out`, verifying every segment it reads before
    /// a byte of it is written. A damaged segment is an `InvalidData` error wrapping
    /// [`InvalidBlob`].
    pub fn copy_range<W: Write>(&mut self, range: Range<u64>, mut out: W) -> io::Result<u64> {
        if self.header.is_none() {
            self.file.seek(SeekFrom::Start(range.start))?;
            let n = range.end.saturating_sub(range.start);
            let got = io::copy(&mut (&mut self.file).take(n), &mut out)?;
            if got < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the payload file ended early",
                ));
            }
            return Ok(got);
        }
        blobsync_shared::codec::decrypt_range(
            &self.key,
            &mut self.file,
            &self.ns,
            &self.id,
            range,
            out,
        )
        .map_err(codec_io)
    }
}

/// Whether a payload file of `file_len` bytes, for a blob of `plain_size` plaintext bytes that
/// the store still lists as plaintext, holds the plaintext itself (written by a release before
/// at-rest encryption). A sealed payload is always longer than its plaintext (a header, and a
/// tag per segment), so the length tells them apart, even when a crash came between the
/// migration's rename and its store commit. Only for listed rows: see [`PlainSource::open`].
pub fn is_plain_len(file_len: u64, plain_size: u64) -> bool {
    file_len == plain_size
}

/// Reads and checks the header at the start of `file` (which ends positioned after it).
fn read_header(file: &mut File, ns: &Namespace, id: &BlobId) -> Result<Header, CodecError> {
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let mut filled = 0;
    while filled < hbuf.len() {
        match file.read(&mut hbuf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let Some((h, len)) = Header::parse(&hbuf[..filled])? else {
        return Err(InvalidBlob::Truncated {
            received: filled as u64,
            expected: filled as u64 + 1,
        }
        .into());
    };
    if h.namespace != *ns {
        return Err(InvalidBlob::NamespaceMismatch {
            expected: ns.clone(),
            found: h.namespace,
        }
        .into());
    }
    if h.id != *id {
        return Err(InvalidBlob::IdMismatch {
            expected: id.clone(),
            found: h.id,
        }
        .into());
    }
    file.seek(SeekFrom::Start(len as u64))?;
    Ok(h)
}

/// Blocking: the header at the start of a payload file, checked against `ns`/`id`; no
/// segment is read.
pub fn header_of(path: &Path, ns: &Namespace, id: &BlobId) -> Result<Header, CodecError> {
    read_header(&mut File::open(path)?, ns, id)
}

fn codec_io(e: CodecError) -> io::Error {
    match e {
        CodecError::Io(io) => io,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// What [`authenticate`] found: a payload that verified from its header to its last tag.
#[derive(Debug, Clone)]
pub struct Authentic {
    /// Its header.
    pub header: Header,
    /// SHA-256 of its plaintext.
    pub sha256: [u8; 32],
}

/// A `Write` that only hashes.
struct HashSink(ring::digest::Context);

impl Write for HashSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Blocking: authenticates every segment of the payload at `path` as `ns`/`id` and hashes
/// its plaintext, which goes nowhere else. Any damage is `CodecError::Invalid`.
pub fn authenticate(
    key: &StorageKey,
    path: &Path,
    ns: &Namespace,
    id: &BlobId,
) -> Result<Authentic, CodecError> {
    let f = File::open(path)?;
    let mut w = DecryptWriter::new(
        key,
        ns,
        id,
        HashSink(ring::digest::Context::new(&ring::digest::SHA256)),
    );
    io::copy(&mut io::BufReader::with_capacity(256 * 1024, f), &mut w).map_err(|e| {
        match blobsync_shared::codec::invalid_blob(&e) {
            Some(i) => CodecError::Invalid(i.clone()),
            None => CodecError::Io(e),
        }
    })?;
    let (header, sink) = w.finish()?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(sink.0.finish().as_ref());
    Ok(Authentic { header, sha256 })
}

/// Blocking: decrypts the payload at `src` (authenticating it) and seals the same plaintext
/// under `header` (a fresh salt) into `out`. Returns the plaintext's SHA-256.
pub fn reseal<W: Write>(
    key: &StorageKey,
    src: &Path,
    header: Header,
    out: &mut W,
) -> Result<[u8; 32], CodecError> {
    let (ns, id) = (header.namespace.clone(), header.id.clone());
    let mut file = File::open(src)?;
    let mut source = PlainSource {
        header: Some(read_header(&mut file, &ns, &id)?),
        plain_size: 0,
        file,
        key: key.clone(),
        ns,
        id,
    };
    let size = source.header.as_ref().map_or(0, |h| h.plain_size);
    if size != header.plain_size {
        return Err(CodecError::SizeMismatch {
            expected: header.plain_size,
            actual: size,
        });
    }
    let mut w = SealWriter {
        sealer: Sealer::new(key, header),
        out,
        buf: Vec::new(),
    };
    source.copy_range(0..size, &mut w).map_err(|e| {
        match blobsync_shared::codec::invalid_blob(&e) {
            Some(i) => CodecError::Invalid(i.clone()),
            None => CodecError::Io(e),
        }
    })?;
    let SealWriter {
        sealer,
        out,
        mut buf,
    } = w;
    let sha = sealer.finish(&mut buf)?;
    out.write_all(&buf)?;
    Ok(sha)
}

/// [`Sealer`] as a `Write` over another.
struct SealWriter<'a, W: Write> {
    sealer: Sealer,
    out: &'a mut W,
    buf: Vec<u8>,
}

impl<W: Write> Write for SealWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.sealer.push(b, &mut self.buf)?;
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A streamed put whose size is not known up front (`Put` without `size_hint`): its bytes
/// are spooled sealed under a one-time key held only in memory (AES-256-GCM, 64 KiB chunks,
/// the chunk counter as nonce), then sealed into the payload once the size is known. So no
/// plaintext reaches the disk even before the blob's header can be written; a crash leaves
/// an unreadable temp file (unnamed where the file system allows, else swept at start).
pub struct EphemeralSpool {
    key: ring::aead::LessSafeKey,
    /// Chunks sealed so far.
    next: u64,
    buf: Vec<u8>,
    len: u64,
}

/// Plaintext per chunk of an [`EphemeralSpool`].
const SPOOL_CHUNK: usize = 64 * 1024;
const SPOOL_TAG: usize = 16;

impl Default for EphemeralSpool {
    fn default() -> Self {
        Self::new()
    }
}

impl EphemeralSpool {
    /// A spool under a fresh random key.
    pub fn new() -> Self {
        use ring::rand::SecureRandom;
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .expect("the system's random source works");
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &k).expect("32-byte key"),
        );
        k.fill(0);
        Self {
            key,
            next: 0,
            buf: Vec::new(),
            len: 0,
        }
    }

    /// Plaintext bytes taken.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was taken.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn nonce(i: u64) -> ring::aead::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&i.to_be_bytes());
        ring::aead::Nonce::assume_unique_for_key(n)
    }

    fn seal_chunk(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.buf);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Self::nonce(self.next),
                ring::aead::Aad::empty(),
                &mut out[start..],
            )
            .expect("a 64 KiB chunk seals");
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        self.buf.clear();
    }

    /// Takes plaintext; appends the sealed chunks it completes to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = (SPOOL_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == SPOOL_CHUNK {
                self.seal_chunk(out);
            }
        }
    }

    /// Ends the spool: appends the last, partial chunk.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            self.seal_chunk(out);
        }
    }

    /// Blocking: reads the spooled chunks back from the start of `spooled` (authenticating
    /// each) and seals the plaintext under `header` into `out`. Returns its SHA-256.
    pub fn unspool<R: Read, W: Write>(
        &self,
        key: &StorageKey,
        header: Header,
        spooled: &mut R,
        out: &mut W,
    ) -> io::Result<[u8; 32]> {
        let mut sealer = Sealer::new(key, header);
        let mut left = self.len;
        let mut chunk = vec![0u8; SPOOL_CHUNK + SPOOL_TAG];
        let mut sealed = Vec::new();
        let mut i = 0u64;
        while left > 0 {
            let plain = (left as usize).min(SPOOL_CHUNK);
            let c = &mut chunk[..plain + SPOOL_TAG];
            spooled.read_exact(c)?;
            let p = self
                .key
                .open_in_place(Self::nonce(i), ring::aead::Aad::empty(), c)
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the put's spool file was changed on disk; nothing was stored",
                    )
                })?;
            sealer.push(p, &mut sealed)?;
            out.write_all(&sealed)?;
            sealed.clear();
            left -= plain as u64;
            i += 1;
        }
        let sha = sealer.finish(&mut sealed)?;
        out.write_all(&sealed)?;
        Ok(sha)
    }
}

/// Blocking: seals a plaintext payload of the previous release (`src`) under `header` into
/// `out`, checking the plaintext against `expect_sha` (what the store recorded) so damage is
/// never sealed in as if it were the blob.
pub fn seal_legacy<W: Write + Send>(
    key: &StorageKey,
    src: &Path,
    header: Header,
    expect_sha: Option<[u8; 32]>,
    out: &mut W,
) -> io::Result<[u8; 32]> {
    let mut f = File::open(src)?;
    let sha = seal_file(key, header, &mut f, out, |_, _| Ok(()), || false)?;
    if expect_sha.is_some_and(|e| e != sha) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "its plaintext does not match the SHA-256 the store recorded (damaged on disk)",
        ));
    }
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`seal_file`] without write-behind or a cancel.
    fn seal<R: Read, W: Write + Send>(
        key: &StorageKey,
        h: Header,
        plain: &mut R,
        out: &mut W,
    ) -> io::Result<[u8; 32]> {
        seal_file(key, h, plain, out, |_, _| Ok(()), || false)
    }

    fn header(size: u64, exp: u8) -> Header {
        Header::new(Namespace::default(), BlobId::new("b1").unwrap(), size, exp).unwrap()
    }

    #[test]
    fn sealed_payloads_open_whole_and_by_range_and_reseal() {
        let key = StorageKey::generate();
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 5] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let h = header(size as u64, 12);
            let path = dir.path().join(format!("p{size}"));
            let mut out = File::create(&path).unwrap();
            let sha = seal(&key, h.clone(), &mut &plain[..], &mut out).unwrap();
            drop(out);
            // Byte-identical to the codec's own encoding of the same header.
            let mut expect = Vec::new();
            blobsync_shared::codec::encrypt_to(&key, h.clone(), &plain[..], &mut expect).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expect, "size {size}");
            let a = authenticate(&key, &path, &h.namespace, &h.id).unwrap();
            assert_eq!(a.sha256, sha);
            let mut src =
                PlainSource::open(&key, &path, &h.namespace, &h.id, size as u64, false).unwrap();
            for r in [0..size as u64, (size as u64 / 3)..(size as u64 / 2)] {
                let mut got = Vec::new();
                src.copy_range(r.clone(), &mut got).unwrap();
                assert_eq!(got, plain[r.start as usize..r.end as usize]);
            }
            let fresh = header(size as u64, 13);
            let mut resealed = Vec::new();
            assert_eq!(
                reseal(&key, &path, fresh.clone(), &mut resealed).unwrap(),
                sha
            );
            let mut expect = Vec::new();
            blobsync_shared::codec::encrypt_to(&key, fresh, &plain[..], &mut expect).unwrap();
            assert_eq!(resealed, expect);
        }
    }

    #[test]
    fn a_big_file_sealed_on_three_threads_seals_the_same_bytes_and_stops_cleanly() {
        let key = StorageKey::generate();
        let size = HASH_THREAD_MIN as usize + 3 * 65_536 + 17;
        let plain: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
        // 64 KiB segments, and 4 MiB ones (bigger than a read: one segment per write).
        for exp in [22, 16] {
            let h = header(size as u64, exp);
            let mut out = Vec::new();
            let sha = seal(&key, h.clone(), &mut &plain[..], &mut out).unwrap();
            assert_eq!(
                &sha[..],
                ring::digest::digest(&ring::digest::SHA256, &plain).as_ref()
            );
            let mut expect = Vec::new();
            blobsync_shared::codec::encrypt_to(&key, h, &plain[..], &mut expect).unwrap();
            assert!(
                out == expect,
                "segment exp {exp}: the three-thread path sealed other bytes than the codec"
            );
        }
        let h = header(size as u64, 16);

        // A cancel half-way and a source that fails half-way end the put with their own
        // error (the hasher thread is joined, nothing hangs).
        let reads = std::cell::Cell::new(0);
        let e = seal_file(
            &key,
            h.clone(),
            &mut &plain[..],
            &mut Vec::new(),
            |_, _| Ok(()),
            || {
                reads.set(reads.get() + 1);
                reads.get() > 8
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.len() < 1 << 20 {
                    return Err(io::Error::other("disk gone"));
                }
                self.0.read(buf)
            }
        }
        // A write that fails half-way (a full disk) is the error reported, not "a helper
        // stopped".
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 > 1 << 20 {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = seal(&key, h.clone(), &mut &plain[..], &mut Full(0)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        let e = seal(&key, h, &mut Failing(&plain), &mut Vec::new()).unwrap_err();
        assert!(is_source_error(&e), "{e}");
    }

    #[test]
    fn a_damaged_payload_fails_and_a_wrong_size_is_refused() {
        let key = StorageKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let plain = vec![9u8; 10_000];
        let h = header(plain.len() as u64, 12);
        let path = dir.path().join("p");
        let mut out = File::create(&path).unwrap();
        seal(&key, h.clone(), &mut &plain[..], &mut out).unwrap();
        drop(out);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            authenticate(&key, &path, &h.namespace, &h.id),
            Err(CodecError::Invalid(_))
        ));
        // The first segments still read; the damaged one is never handed out.
        let mut src = PlainSource::open(&key, &path, &h.namespace, &h.id, 10_000, false).unwrap();
        let mut got = Vec::new();
        src.copy_range(0..4096, &mut got).unwrap();
        assert_eq!(got, plain[..4096]);
        assert!(src.copy_range(0..10_000, &mut Vec::new()).is_err());
        let short = header(plain.len() as u64 + 1, 12);
        let e = seal(&key, short, &mut &plain[..], &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn an_ephemeral_spool_round_trips_into_a_payload() {
        let key = StorageKey::generate();
        for size in [0usize, 10, SPOOL_CHUNK, 2 * SPOOL_CHUNK + 3] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 13) as u8).collect();
            let mut spool = EphemeralSpool::new();
            let mut spooled = Vec::new();
            for c in plain.chunks(1000) {
                spool.push(c, &mut spooled);
            }
            spool.finish(&mut spooled);
            assert!(
                size == 0 || spooled[..size.min(100)] != plain[..size.min(100)],
                "the spool holds no plaintext"
            );
            let h = header(size as u64, 12);
            let mut out = Vec::new();
            spool
                .unspool(&key, h.clone(), &mut &spooled[..], &mut out)
                .unwrap();
            let mut expect = Vec::new();
            blobsync_shared::codec::encrypt_to(&key, h, &plain[..], &mut expect).unwrap();
            assert_eq!(out, expect);
        }
    }
}
