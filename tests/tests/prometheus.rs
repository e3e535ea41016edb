//! A real Prometheus scrapes the agent: its PromQL answer for a workload's working set matches the
//! kernel's `memory.stat`, and `promtool check metrics` accepts the exposition.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use memlens_tests::{rel_diff, Agent, TestCgroup, Workload, MIB};
use serde_json::Value;

/// A loopback port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` on 127.0.0.1:`port`: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (
            format!("nothing listens on 127.0.0.1:{port}"),
            String::new(),
        );
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tool(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        Path::new(&path).is_file(),
        "{path} missing: run `cargo xtask setup` (it installs Debian's prometheus)"
    );
    path
}

/// Prometheus on loopback, scraping the agent every second; stopped (by pid) on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: memlens\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant PromQL query that returns one series, once there is one.
    fn query_one(&self, promql: &str, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = http_get(
                self.port,
                &format!("/api/v1/query?query={}", encode(promql)),
            );
            if status.contains("200") {
                let v: Value = serde_json::from_str(&body).expect("query answer is JSON");
                if let Some(value) = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                {
                    return value;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no answer to {promql} within {timeout:?}: {status} {body}"
            );
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_sees_the_working_set_the_kernel_counts() {
    let cgroup = TestCgroup::new("prometheus");
    let mut workload = Workload::start(&cgroup, &["anon", "128"]);
    workload.expect_line("ready");
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let agent = Agent::start(&["--metrics-addr", &addr]);

    let (status, text) = http_get(metrics_port, "/metrics");
    assert!(status.contains("200"), "{status:?}\n{}", agent.log());
    assert!(
        text.contains("container_memory_working_set_bytes{"),
        "{text}"
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
    // Only the exposition and the health check on TCP: the API stays on the socket.
    assert!(http_get(metrics_port, "/healthz").0.contains("200"));
    assert!(http_get(metrics_port, "/v1/top").0.contains("404"));

    let prometheus = Prometheus::start(metrics_port);
    let promql = format!(
        "container_memory_working_set_bytes{{id=\"{}\"}}",
        cgroup.path
    );
    let scraped = prometheus.query_one(&promql, Duration::from_secs(60)) as u64;
    // The kernel's working set as kubelet computes it: usage - inactive file.
    let usage_file = if cgroup.v2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let usage: u64 = std::fs::read_to_string(cgroup.dir.join(usage_file))
        .expect("usage")
        .trim()
        .parse()
        .expect("usage is a number");
    let kernel = usage.saturating_sub(cgroup.stat("inactive_file", "inactive_file"));
    eprintln!(
        "working set: Prometheus {:.1} MiB, memory.stat {:.1} MiB",
        scraped as f64 / MIB as f64,
        kernel as f64 / MIB as f64
    );
    assert!(
        rel_diff(scraped, kernel) <= 0.05,
        "Prometheus says {scraped}, the kernel {kernel}"
    );
    // One series per event kind, summing to the open events the agent lists.
    let kinds = prometheus.query_one("count(memlens_events_open)", Duration::from_secs(10));
    assert_eq!(kinds, 3.0, "one memlens_events_open series per kind");
    let listed = agent.cli(&["events", "list", "--status", "open", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("events JSON");
    let open = listed["events"].as_array().expect("events").len() as f64;
    let exported = prometheus.query_one("sum(memlens_events_open)", Duration::from_secs(10));
    assert_eq!(
        exported, open,
        "memlens_events_open against the agent's open events"
    );
    workload.send("exit");
}

/// `promtool check metrics` on `text`: Ok, or what it said.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let checked = check.wait_with_output().expect("promtool");
    if checked.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        ))
    }
}

#[test]
fn hostile_file_names_cannot_break_or_forge_the_exposition() {
    // Any process on the node may name a file so: a quote and a brace to end the label, a newline
    // and a sample of its choosing, a fake HELP line.
    let hostile = "a\"b}\nc{x=\"1\"} 99\n# HELP fake";
    let cgroup = TestCgroup::new("hostile");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join(hostile);
    let log_path = log.to_str().expect("path").to_string();
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let agent = Agent::start(&["--metrics-addr", &addr]);
    let mut writer = Workload::start(&cgroup, &["appendlog", &log_path, "16"]);
    writer.expect_line("written");
    let deadline = Instant::now() + memlens_tests::patience(Duration::from_secs(30));
    let text = loop {
        let (status, body) = http_get(metrics_port, "/metrics");
        if status.contains("200") && body.contains("HELP fake\"") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the hostile file never reached /metrics:\n{body}\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(500));
    };
    let sample = text
        .lines()
        .find(|l| l.starts_with("memlens_file_cache_bytes{") && l.contains("HELP fake"))
        .expect("the file's sample");
    assert!(
        sample.contains("b}\\nc{x=\\\"1\\\"} 99\\n# HELP fake\""),
        "escaped on one line: {sample}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("c{") || l == "# HELP fake"),
        "a forged line made it into the exposition"
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
    // Prometheus parses the whole exposition and keeps the name as the label's value.
    let prometheus = Prometheus::start(metrics_port);
    let bytes = prometheus.query_one(
        &format!(
            "memlens_file_cache_bytes{{file=\"{}\"}}",
            log_path
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        ),
        Duration::from_secs(60),
    );
    assert!(bytes >= (8 * MIB) as f64, "{bytes}");
    assert_eq!(
        prometheus.query_one("absent(c)", Duration::from_secs(10)),
        1.0
    );
    // The terminal shows the newline as `\n`, never as a line break.
    let out = agent.cli(&["cache", "--cgroup", &cgroup.path]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("a\"b}\\nc{x=\"1\"} 99\\n# HELP fake"),
        "{shown}"
    );
    assert!(!shown.lines().any(|l| l.starts_with("c{x=")), "{shown}");
    writer.send("exit");
}
