//! Standard output for the live lines and the summary. A reader that goes
//! away (`lagtrace … | head -1`) closes the pipe: printing stops, quietly,
//! and the trace goes on to write its files. `println!` would panic there.
use std::io::{self, Write};

#[derive(Default)]
pub struct Console {
    closed: bool,
}

impl Console {
    /// Print `text` as is (no newline added), unless stdout is gone.
    pub fn print(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.closed = true;
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("lagtrace: warning: standard output failed ({e}); printing stops");
            } else {
                log::info!("standard output closed; printing stops");
            }
        }
    }

    /// Print one line.
    pub fn line(&mut self, line: &str) {
        let mut s = String::with_capacity(line.len() + 1);
        s.push_str(line);
        s.push('\n');
        self.print(&s);
    }

    pub fn closed(&self) -> bool {
        self.closed
    }
}
