//! What the proxy logged, for tests that assert a reason was logged: one process-wide tracing
//! subscriber writing into memory. Tests run in parallel, so a test looks for text only it
//! can have caused (its own CA address, say).
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing (once per test binary).
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    });
}

/// The captured lines that contain every one of `parts`.
pub fn lines_with(parts: &[&str]) -> Vec<String> {
    let Some(buffer) = LOGS.get() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .map(String::from)
        .collect()
}
