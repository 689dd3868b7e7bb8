//! Shared helpers of the workspace tests.

use std::path::{Path, PathBuf};

/// The reference fixture copied into the repository.
pub fn fixture_dir() -> PathBuf {
    dsocr_testkit::fixtures::reference_tiny()
}

/// The `dsocr` binary built by `cargo test --workspace` into the same target folder.
pub fn dsocr_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/dsocr
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary inside target/<profile>/deps");
    let bin = profile_dir.join(format!("dsocr{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the dsocr binary), or `cargo build -p dsocr-cli` first",
        bin.display()
    );
    bin
}

/// A fresh empty temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsocr-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A `dsocr serve` process on a free port, killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything it printed on stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServeProcess {
    /// Starts `dsocr serve --port 0 ARGS` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(args, None)
    }

    /// [`start`](Self::start) with one more environment variable.
    pub fn start_with_env(args: &[&str], env: (&str, &str)) -> Self {
        Self::spawn(args, Some(env))
    }

    fn spawn(args: &[&str], env: Option<(&str, &str)>) -> Self {
        use std::io::BufRead;
        let mut command = std::process::Command::new(dsocr_bin());
        command.env_remove("DSOCR_API_KEY");
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        let mut child = command
            .args(["serve", "--port", "0", "--device", "cpu"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("dsocr serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                // The line goes into the log before `start` is told the address, so a caller
                // that reads the log after `start` sees the `listening on` line.
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let base = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("dsocr serve did not start: {}", log.lock().map(|s| s.clone()).unwrap_or_default());
            }
        };
        Self { child, base, stderr: log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
