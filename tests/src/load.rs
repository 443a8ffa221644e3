//! A steady load (tests/apps/steady.py) in a pod whose answers are read as
//! they come, so that a test can order its phases by what the load saw
//! ("20 answers after the change") rather than by sleeping.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use crate::{Cluster, eventually, tagger_bin, workspace};

/// One request of a steady load: when it was sent (unix seconds), its status
/// (0 for a transport error) and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: f64,
    pub status: u16,
    pub body: String,
}

pub struct SteadyLoad {
    child: Child,
    answers: Arc<Mutex<Vec<Answer>>>,
    reader: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Starts `steady.py URL SECS HEADERS...` in `pod`, in the background.
    /// `secs` bounds the load; [`SteadyLoad::finish`] may end it earlier.
    pub fn steady_load(&self, pod: &str, url: &str, secs: u32, headers: &[&str]) -> SteadyLoad {
        self.steady_load_every(pod, url, secs, Duration::from_millis(40), headers)
    }

    /// As [`Cluster::steady_load`], each thread pausing `interval` between
    /// requests.
    pub fn steady_load_every(
        &self,
        pod: &str,
        url: &str,
        secs: u32,
        interval: Duration,
        headers: &[&str],
    ) -> SteadyLoad {
        let mut launcher = Command::new(tagger_bin());
        launcher
            .args(self.run_dir_args())
            .args(["cluster", "exec", pod, "--"]);
        SteadyLoad::start(launcher, url, secs, interval, headers)
    }
}

impl SteadyLoad {
    /// `steady.py` run by `launcher`, a command that runs the arguments
    /// given after it inside a pod.
    pub fn start(
        mut launcher: Command,
        url: &str,
        secs: u32,
        interval: Duration,
        headers: &[&str],
    ) -> SteadyLoad {
        let mut child = launcher
            .arg("python3")
            .arg(workspace().join("tests/apps/steady.py"))
            .arg("--until-stdin-closes")
            .arg("--interval")
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(url)
            .arg(secs.to_string())
            .args(headers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the steady load");
        let stdout = child.stdout.take().expect("piped stdout");
        let answers = Arc::new(Mutex::new(Vec::new()));
        let sink = answers.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, ' ');
                let answer = Answer {
                    at: parts.next().unwrap_or("0").parse().unwrap_or(0.0),
                    status: parts.next().unwrap_or("0").parse().unwrap_or(0),
                    body: parts.next().unwrap_or("").to_string(),
                };
                sink.lock().unwrap().push(answer);
            }
        });
        SteadyLoad {
            child,
            answers,
            reader: Some(reader),
        }
    }

    /// The answers so far.
    pub fn seen(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until `count` answers sent after unix time
    /// `since` satisfy `keep`; panics naming `what` if they never do.
    pub fn wait_for(
        &self,
        what: &str,
        since: f64,
        count: usize,
        limit: Duration,
        keep: impl Fn(&Answer) -> bool,
    ) {
        let got = eventually(limit, || {
            let answers = self.answers.lock().unwrap();
            let n = answers.iter().filter(|a| a.at >= since && keep(a)).count();
            (n >= count).then_some(())
        });
        assert!(
            got.is_some(),
            "the load never saw {count} answers of {what} within {limit:?}; last: {:?}",
            self.seen().iter().rev().take(5).collect::<Vec<_>>()
        );
    }

    /// Ends the load now (closing its standard input, which it watches)
    /// and returns every answer in the order they were sent.
    pub fn finish(mut self) -> Vec<Answer> {
        drop(self.child.stdin.take());
        self.answers()
    }

    /// Waits for the load to end by itself (its `secs`); returns every
    /// answer in the order they were sent.
    pub fn answers(mut self) -> Vec<Answer> {
        let status = self.child.wait().expect("steady load");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("steady load reader");
        }
        let mut answers = std::mem::take(&mut *self.answers.lock().unwrap());
        // Lines come as requests end; the order that matters is when they
        // were sent (and decided).
        answers.sort_by(|a, b| a.at.total_cmp(&b.at));
        assert!(
            !answers.is_empty(),
            "the steady load answered nothing (exit {status})"
        );
        answers
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        if self.reader.is_some() {
            // SAFETY: as in `finish`: our own unreaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}
