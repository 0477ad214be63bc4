//! Container logs: what a container writes to stdout and stderr is stored line by line in the
//! CRI format Kubernetes uses (`<RFC 3339 nano time> <stream> <F|P> <text>`), one file per
//! container start, at `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`. Readers
//! (the kubelet's `/containerLogs` endpoint) select by `previous`, `tailLines`, `sinceSeconds`,
//! `limitBytes`, add `timestamps`, and `follow` a live file until the container exits.
//!
//! **Bounds.** A line longer than `LINE_BYTES_MAX` is split into partial (`P`) records; a file
//! that reaches `FILE_BYTES_MAX` is rotated once to `<n>.log.1` (the older half is dropped),
//! so a container holds at most twice that on disk.

use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

pub const LINE_BYTES_MAX: usize = 16 * 1024;
pub const FILE_BYTES_MAX: u64 = 10 * 1024 * 1024;

/// Where a pod's container logs live.
pub fn container_dir(root: &Path, ns: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
    root.join(format!("{ns}_{pod}_{uid}")).join(container)
}

/// The log file of one container start, written by the output pumps.
pub struct LogSink {
    path: PathBuf,
    file: Mutex<(std::fs::File, u64)>,
    /// Bytes written so far (followers wake on change); `done` once the container exited.
    progress: tokio::sync::watch::Sender<(u64, bool)>,
}

impl LogSink {
    pub fn create(path: PathBuf) -> std::io::Result<Arc<LogSink>> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(LogSink { path, file: Mutex::new((file, len)), progress: tokio::sync::watch::channel((0, false)).0 }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<(u64, bool)> {
        self.progress.subscribe()
    }

    /// Appends one record; `full` is false for a piece of a longer line.
    pub fn record(&self, stream: &str, full: bool, text: &[u8]) {
        let ts = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string();
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(ts.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(if full { b" F " } else { b" P " });
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut g = self.file.lock().unwrap();
        if g.1 + line.len() as u64 > FILE_BYTES_MAX {
            let old = self.path.with_extension("log.1");
            let _ = std::fs::rename(&self.path, &old);
            if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                *g = (f, 0);
            }
        }
        if g.0.write_all(&line).is_ok() {
            g.1 += line.len() as u64;
        }
        let written = g.1;
        drop(g);
        self.progress.send_modify(|p| p.0 = p.0.wrapping_add(1).max(written));
    }

    pub fn finish(&self) {
        self.progress.send_modify(|p| p.1 = true);
    }
}

/// Copies one output stream of a child into the sink, line by line, bounded.
pub async fn pump<R: tokio::io::AsyncRead + Unpin>(r: R, stream: &'static str, sink: Arc<LogSink>) {
    pump_with(r, stream, sink, |_| {}).await
}

/// [`pump`] of a container's terminal (its master, which fails with EIO once no process
/// holds the terminal), also passing each chunk on as it comes, for attach.
pub async fn pump_tty<R: tokio::io::AsyncRead + Unpin>(r: R, sink: Arc<LogSink>, raw: tokio::sync::broadcast::Sender<bytes::Bytes>) {
    pump_with(r, "stdout", sink, move |chunk| {
        // Nobody attached: nothing to send to.
        let _ = raw.send(bytes::Bytes::copy_from_slice(chunk));
    })
    .await
}

async fn pump_with<R: tokio::io::AsyncRead + Unpin>(mut r: R, stream: &'static str, sink: Arc<LogSink>, mut chunk: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; LINE_BYTES_MAX];
    let mut filled = 0;
    loop {
        let n = match r.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        chunk(&buf[filled..filled + n]);
        filled += n;
        let mut start = 0;
        while let Some(nl) = buf[start..filled].iter().position(|b| *b == b'\n') {
            sink.record(stream, true, &buf[start..start + nl]);
            start += nl + 1;
        }
        if start == 0 && filled == buf.len() {
            sink.record(stream, false, &buf[..filled]);
            filled = 0;
        } else {
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
    }
    if filled > 0 {
        sink.record(stream, true, &buf[..filled]);
    }
}

/// `kubectl logs` options.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since_seconds: Option<u64>,
}

/// One parsed record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub full: bool,
    pub text: &'a [u8],
}

pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Record { time, full: tag != b"P", text })
}

/// Renders records as `kubectl logs` shows them.
pub fn render(rec: &Record, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(rec.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(rec.text);
    if rec.full {
        out.push(b'\n');
    }
}

/// The log files of one container, oldest start first.
pub fn starts(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n: u32 = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Reads what exists now of a log file, applying the options; returns the rendered bytes
/// and the offset read to (where a follower continues).
pub fn read_existing(path: &Path, o: &LogOptions, now_unix: i64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut data = Vec::new();
    // A tail only needs the end of a large file: read at most ~ what the tail could need.
    f.read_to_end(&mut data)?;
    let end = data.len() as u64;
    let since = o.since_seconds.map(|s| now_unix - s as i64);
    let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    if let Some(since) = since {
        lines.retain(|l| parse_record(l).and_then(|r| r.time.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t.as_second() >= since));
    }
    if let Some(n) = o.tail_lines {
        // tailLines counts whole lines: partial records belong to the line they continue.
        let mut full_seen = 0;
        let mut cut = lines.len();
        for (i, l) in lines.iter().enumerate().rev() {
            if parse_record(l).is_some_and(|r| r.full) {
                if full_seen == n {
                    break;
                }
                full_seen += 1;
            }
            cut = i;
        }
        lines.drain(..cut);
    }
    let mut out = Vec::new();
    for l in lines {
        if let Some(r) = parse_record(l) {
            render(&r, o.timestamps, &mut out);
        }
    }
    if let Some(limit) = o.limit_bytes {
        out.truncate(limit);
    }
    Ok((out, end))
}

/// Reads records appended after `offset` (a follower's next step).
pub fn read_from(path: &Path, offset: u64, timestamps: bool) -> std::io::Result<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let pos = each_record_from(path, offset, |_, rec| render(rec, timestamps, &mut out))?;
    Ok((out, pos))
}

/// Calls `f` with the stream (`stdout`, `stderr`) and each whole record appended after
/// `offset`; returns the offset after the last.
pub fn each_record_from(path: &Path, offset: u64, mut f: impl FnMut(&[u8], &Record)) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < offset {
        // Rotated: start over on the new file.
        return each_record_from(path, 0, f);
    }
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut r = std::io::BufReader::new(file);
    let mut pos = offset;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        let l = &line[..n - 1];
        if let Some(rec) = parse_record(l) {
            let stream = l.split(|b| *b == b' ').nth(1).unwrap_or(b"stdout");
            f(stream, &rec);
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_splits_lines_and_bounds_them() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::create(dir.path().join("c/0.log")).unwrap();
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', LINE_BYTES_MAX + 10));
        input.extend_from_slice(b"\nlast-without-newline");
        pump(&input[..], "stdout", sink.clone()).await;
        let (out, _) = read_existing(sink.path(), &LogOptions::default(), 0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), LINE_BYTES_MAX + 10, "a long line is split on disk and joined when read");
        assert_eq!(lines[3], "last-without-newline");
        let raw = std::fs::read_to_string(sink.path()).unwrap();
        assert_eq!(raw.lines().filter(|l| l.contains(" P ")).count(), 1);
    }

    #[test]
    fn options_select_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(
            &p,
            "2026-11-22T00:00:00.000000001Z stdout F a\n2026-11-22T00:00:10.000000000Z stderr F b\n2026-11-22T00:00:20.000000000Z stdout P c1\n2026-11-22T00:00:20.000000001Z stdout F c2\n",
        )
        .unwrap();
        let read = |o: LogOptions| String::from_utf8(read_existing(&p, &o, 1_795_305_630).unwrap().0).unwrap();
        assert_eq!(read(LogOptions::default()), "a\nb\nc1c2\n");
        assert_eq!(read(LogOptions { tail_lines: Some(1), ..Default::default() }), "c1c2\n");
        assert_eq!(read(LogOptions { tail_lines: Some(2), ..Default::default() }), "b\nc1c2\n");
        assert_eq!(read(LogOptions { tail_lines: Some(0), ..Default::default() }), "");
        assert_eq!(read(LogOptions { limit_bytes: Some(3), ..Default::default() }), "a\nb");
        assert_eq!(read(LogOptions { timestamps: true, tail_lines: Some(2), ..Default::default() }).lines().next(), Some("2026-11-22T00:00:10.000000000Z b"));
        // now = 00:00:30 (1795305630); since 15 s keeps the records at 00:00:20.
        assert_eq!(read(LogOptions { since_seconds: Some(15), ..Default::default() }), "c1c2\n");
        let (tail, off) = read_from(&p, 0, false).unwrap();
        assert_eq!(String::from_utf8(tail).unwrap(), "a\nb\nc1c2\n");
        assert_eq!(off, std::fs::metadata(&p).unwrap().len());
    }

    #[test]
    fn starts_are_ordered_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 1] {
            std::fs::write(dir.path().join(format!("{n}.log")), "").unwrap();
        }
        std::fs::write(dir.path().join("junk"), "").unwrap();
        let s: Vec<u32> = starts(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(s, [1, 2, 10]);
    }
}
