//! Names where users look: a container in a kubelet-shaped cgroup hierarchy, whose pod and
//! container the kubelet's log directories name, is shown as `namespace/pod/container` by
//! `top`, `leaks`, `cache` and `events`, and by its cgroup path on request.

use std::time::Duration;

use memlens_tests::{leak_bin, TestCgroup, Workload, MIB};
use serde_json::Value;

use crate::{
    harness::{events, json, poll, setup},
    SERIAL,
};

const NAMESPACE: &str = "shop";
const POD: &str = "web-0";
const CONTAINER: &str = "app";
const POD_UID: &str = "4a0e7c1b-7e3f-4d6c-9f63-1f2d3c4b5a69";
const CONTAINER_ID: &str = "0c9c2d0f5b8e4a1d9e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d";

/// The kubelet's `pods` and `containers` log directories for one container, under `logs`.
fn kubelet_logs(logs: &std::path::Path) {
    let dir = logs
        .join("pods")
        .join(format!("{NAMESPACE}_{POD}_{POD_UID}"))
        .join(CONTAINER);
    std::fs::create_dir_all(&dir).expect("pod log directory");
    std::fs::write(dir.join("0.log"), "").expect("container log");
    let containers = logs.join("containers");
    std::fs::create_dir_all(&containers).expect("containers directory");
    std::os::unix::fs::symlink(
        dir.join("0.log"),
        containers.join(format!("{POD}_{NAMESPACE}_{CONTAINER}-{CONTAINER_ID}.log")),
    )
    .expect("container log link");
}

fn text(agent: &memlens_tests::Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "memlens {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn pods_are_shown_by_namespace_pod_and_container() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut setup = setup();
    let logs = setup.dir.path().join("kubelet-logs");
    kubelet_logs(&logs);
    setup.flags.push("--kubelet-logs".into());
    setup.flags.push(logs.display().to_string());
    let node = TestCgroup::new("node");
    let kubepods = node.child("kubepods");
    let burstable = kubepods.child("burstable");
    let pod = burstable.child(&format!("pod{POD_UID}"));
    let container = pod.child(CONTAINER_ID);
    container.set_limit(256 * MIB);
    let agent = setup.agent();
    // A leak of 4 MiB a second: a leak event on the container before its OOM kill.
    let _app = Workload::start_program(&container, &leak_bin(), &["400", "4"]);
    let name = format!("{NAMESPACE}/{POD}/{CONTAINER}");
    let row = poll(Duration::from_secs(30), "the container in top", || {
        json(&agent, &["top", "--json", "--limit", "0"])["cgroups"]
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|r| r["path"] == container.path.as_str())
                    .cloned()
            })
    });
    assert_eq!(
        (
            &row["pod"]["namespace"],
            &row["pod"]["pod"],
            &row["pod"]["container"]
        ),
        (
            &Value::from(NAMESPACE),
            &Value::from(POD),
            &Value::from(CONTAINER)
        ),
        "{row:#}"
    );
    let top = text(&agent, &["top", "--cgroup", &container.path]);
    assert!(top.contains(&name), "{top}");
    let by_path = text(&agent, &["top", "--cgroup", &container.path, "--paths"]);
    assert!(
        by_path.contains(CONTAINER_ID) && !by_path.contains(&name),
        "{by_path}"
    );
    agent.wait_censuses(2);
    let leaks = text(&agent, &["leaks", "--cgroup", &container.path]);
    assert!(leaks.contains(&name), "{leaks}");
    let cache = text(&agent, &["cache", "--cgroup", &container.path]);
    assert!(
        cache.contains(&name) && cache.contains(&container.path),
        "{cache}"
    );
    let event = poll(
        Duration::from_secs(45),
        "the container's leak event",
        || events(&agent, "leak_suspected", &container.path).pop(),
    );
    let dims = &event["dimensions"];
    assert_eq!(
        (&dims["namespace"], &dims["pod"], &dims["container_name"]),
        (
            &Value::from(NAMESPACE),
            &Value::from(POD),
            &Value::from(CONTAINER)
        ),
        "{dims}"
    );
    // The WORKLOAD column, by the header's offsets (the table pads its columns).
    let workload_column = |listing: &str| -> Vec<String> {
        let header = listing.lines().next().unwrap_or_default();
        let (Some(from), Some(to)) = (header.find("WORKLOAD"), header.find("SUMMARY")) else {
            return Vec::new();
        };
        listing
            .lines()
            .filter(|l| l.contains("leak_suspected"))
            .filter_map(|l| l.get(from..to).map(|c| c.trim().to_string()))
            .collect()
    };
    let listed = text(&agent, &["events", "list"]);
    assert_eq!(workload_column(&listed), [name.as_str()], "{listed}");
    let listed = text(&agent, &["events", "list", "--paths"]);
    assert_eq!(
        workload_column(&listed),
        [container.path.as_str()],
        "{listed}"
    );
}
