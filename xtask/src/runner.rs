//! Runs each test binary under a time limit, so that a hang fails with the
//! name of the test that hung instead of holding CI until its own limit;
//! keeps the time each took and libtest's counts for the closing summary.
use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// One test run (a test binary, or a group of them) and how it went.
pub struct Outcome {
    pub name: String,
    pub took: Duration,
    pub passed: u64,
    pub failed: u64,
    /// Why it did not pass: a failed exit, or the time limit (naming the
    /// test that was running).
    pub problem: Option<String>,
}

/// Runs `cmd` (a `cargo test` invocation) with its output shown as it comes
/// and read for libtest's lines; past `limit` its process group is killed.
pub fn run_limited(name: &str, cmd: &mut Command, limit: Duration) -> Result<Outcome> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = seen.clone();
    let echo = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let _ = std::io::stdout().write_all(&chunk[..n]);
            let _ = std::io::stdout().flush();
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            timed_out = true;
            // SAFETY: kill(2) on the process group of the child we spawned
            // in its own group (its pid is the group id).
            unsafe { libc_kill(-(child.id() as i32), 9) };
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = echo.join();
    let output = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let (passed, failed) = counts(&output);
    let problem = if timed_out {
        Some(format!(
            "exceeded its time limit of {} s while running {}",
            limit.as_secs(),
            running_test(&output).unwrap_or("(no test had started)")
        ))
    } else if !status.success() {
        Some(format!("failed ({status})"))
    } else {
        None
    };
    Ok(Outcome {
        name: name.to_string(),
        took: started.elapsed(),
        passed,
        failed,
        problem,
    })
}

/// Sums libtest's `test result: ... N passed; M failed` lines.
fn counts(output: &str) -> (u64, u64) {
    let mut sum = (0, 0);
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        let number = |word: &str| -> u64 {
            rest.split(';')
                .find_map(|part| part.trim().strip_suffix(word))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        };
        sum.0 += number(" passed");
        sum.1 += number(" failed");
    }
    sum
}

/// The test libtest started last and did not finish (`test NAME ... `
/// without its `ok`/`FAILED`), with one test at a time.
fn running_test(output: &str) -> Option<&str> {
    let last = output.rsplit('\n').find(|l| l.starts_with("test "))?;
    let (name, result) = last.strip_prefix("test ")?.split_once(" ...")?;
    result.trim().is_empty().then_some(name)
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// The closing table: time per test binary, then the plain closing line.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut out = String::from("\n== time per test binary\n");
    for o in outcomes {
        out.push_str(&format!(
            "{:>7.1} s  {:<28} {:>4} passed {:>3} failed  {}\n",
            o.took.as_secs_f64(),
            o.name,
            o.passed,
            o.failed,
            o.problem.as_deref().unwrap_or("ok")
        ));
    }
    let total: Duration = outcomes.iter().map(|o| o.took).sum();
    out.push_str(&format!("{:>7.1} s  in all\n", total.as_secs_f64()));
    let passed: u64 = outcomes.iter().map(|o| o.passed).sum();
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    out.push_str(&format!("{passed} passed, {failed} failed\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_are_read() {
        let output = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\ntest result: ok. 5 passed; 0 failed; 2 ignored\n";
        assert_eq!(counts(output), (6, 1));
        assert_eq!(running_test(output), None);
        assert_eq!(
            running_test("running 3 tests\ntest a ... ok\ntest slow_one ... "),
            Some("slow_one")
        );
        assert_eq!(running_test("running 0 tests\n"), None);
    }
}
