//! Processes the harness starts: in a process group of their own, their
//! output to a log file, stopped by their pid.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `cmd` in `dir`, in its own process group (so that it can be
/// stopped with its children), stdout and stderr to `log_path`.
pub(crate) fn spawn_logged(mut cmd: Command, dir: &Path, log_path: &Path) -> Child {
    let log = fs::File::create(log_path).unwrap();
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

pub(crate) fn signal(pid: i32, sig: i32) {
    // SAFETY: sends a signal to a process (group) this harness started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A process other than uWSGI (HAProxy), stopped by its pid on drop.
pub struct Process {
    child: Child,
    pub log_path: PathBuf,
}

impl Process {
    pub fn spawn(dir: &Path, name: &str, program: &str, args: &[&str]) -> Process {
        let log_path = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(program);
        cmd.args(args);
        let child = spawn_logged(cmd, dir, &log_path);
        Process { child, log_path }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(-pid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}
