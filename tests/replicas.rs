//! Several builders sharing one S3 bucket and one controller (the double), through real
//! git + OpenSSH: one push of an app at a time across all of them, and an app whose
//! builder died or lost the store is free again within the lease TTL.

mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use deis_controller_double::{ControllerDouble, DoubleUser};
use util::proxy::{Fault, FaultProxy};
use util::*;

const BUILDER_KEY: &str = "replicas-builder-key";
/// Short, so takeovers happen within a test's patience (the default is 30s).
const LEASE_TTL: &str = "6s";

/// The world of one test: a controller double, a bucket, a developer owning `apps`.
struct Cluster {
    _runtime: tokio::runtime::Runtime,
    double: ControllerDouble,
    bucket: String,
    key: Key,
    /// The replicas run the standalone controller (its state in the bucket), not the double.
    standalone: bool,
}

impl Cluster {
    fn new(apps: &[&str]) -> Cluster {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let double = runtime.block_on(ControllerDouble::start(BUILDER_KEY));
        let key = Key::generate("ed25519", "dev");
        double.add_user(DoubleUser {
            username: "dev".into(),
            fingerprint: key.fingerprint.clone(),
            apps: apps.iter().map(|a| a.to_string()).collect(),
        });
        Cluster {
            _runtime: runtime,
            double,
            bucket: unique("replicas"),
            key,
            standalone: false,
        }
    }

    /// Replicas with the standalone controller (authorize the developer through one).
    fn standalone() -> Cluster {
        let mut cluster = Cluster::new(&[]);
        cluster.standalone = true;
        cluster
    }

    /// A builder on the shared bucket, reaching S3 at `s3` (the server, or a proxy).
    fn replica_via(&self, s3: &str) -> Builder {
        self.replica_with(s3, &[])
    }

    fn replica_with(&self, s3: &str, args: &[&str]) -> Builder {
        Builder::start(BuilderOptions {
            controller: if self.standalone {
                ControllerMode::Standalone
            } else {
                ControllerMode::Deis {
                    url: self.double.url(),
                    key: BUILDER_KEY.into(),
                }
            },
            extra_args: vec![
                "--storage".into(),
                format!("s3://{}", self.bucket),
                "--s3-endpoint".into(),
                s3.to_owned(),
                "--lease-ttl".into(),
                LEASE_TTL.into(),
            ]
            .into_iter()
            .chain(args.iter().map(|arg| arg.to_string()))
            .collect(),
            ..Default::default()
        })
    }

    fn replica(&self) -> Builder {
        self.replica_via(&s3_endpoint())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        S3::connect().remove_bucket(&self.bucket);
    }
}

fn builder_id(builder: &Builder) -> String {
    std::fs::read_to_string(builder.data_dir.path().join("builder-id")).unwrap()
}

fn metric(builder: &Builder, name: &str) -> f64 {
    let (_, body) = http_get(builder.http_port, "/metrics").expect("GET /metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("deis_builder_{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Each push's first and last event, by app: `(start, end)` timestamps (RFC 3339 in UTC
/// with a fixed number of digits, so they compare as strings), from JSON logs.
fn builds_by_app(builders: &[Builder]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut pushes: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for builder in builders {
        for line in builder.log().lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let spans = event["spans"].as_array().cloned().unwrap_or_default();
            let Some(push) = spans.iter().find(|span| span["name"] == "push") else {
                continue;
            };
            let (Some(app), Some(id), Some(at)) = (
                push["app"].as_str(),
                push["push_id"].as_str(),
                event["timestamp"].as_str(),
            ) else {
                continue;
            };
            let at = at.to_owned();
            pushes
                .entry((app.to_owned(), id.to_owned()))
                .and_modify(|(start, end)| {
                    *start = start.clone().min(at.clone());
                    *end = end.clone().max(at.clone());
                })
                .or_insert((at.clone(), at));
        }
    }
    let mut by_app: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for ((app, _), span) in pushes {
        by_app.entry(app).or_default().push(span);
    }
    for spans in by_app.values_mut() {
        spans.sort();
    }
    by_app
}

/// 30 pushes of 10 apps spread over three replicas, each app's three pushes sent at once
/// to the three of them, six pushes at once: every push deploys and no app's builds
/// overlap. Returns the replicas.
fn thirty_pushes_over_three_replicas(cluster: &Cluster, names: &[String]) -> Vec<Builder> {
    let json = ["--log-format", "json"];
    let replicas: Vec<Builder> = (0..3)
        .map(|_| cluster.replica_with(&s3_endpoint(), &json))
        .collect();
    if cluster.standalone {
        // Into the bucket, where every replica reads its users.
        replicas[0].authorize(&cluster.key);
    }
    // Each app gets three commits; push i sends commit i to replica i. They land in any
    // order, and every replica brings its copy up to date from the store first, so each
    // push forces master to its commit (as `git push --force deis <commit>:master`).
    let apps: Vec<(App, Vec<String>)> = names
        .iter()
        .map(|_| {
            let app = App::from_fixture("static-site");
            let commits = (0..3)
                .map(|i| app.commit_file("push.txt", &format!("push {i}\n")))
                .collect();
            (app, commits)
        })
        .collect();
    // Two apps at a time: six pushes at once.
    for pair in names.iter().zip(&apps).collect::<Vec<_>>().chunks(2) {
        std::thread::scope(|scope| {
            for (name, (app, commits)) in pair {
                for (replica, commit) in replicas.iter().zip(commits) {
                    let key = &cluster.key;
                    scope.spawn(move || {
                        let refspec = format!("+{commit}:refs/heads/master");
                        app.push_ref(replica, name, key, &refspec)
                            .assert_ok()
                            .assert_says("deployed");
                    });
                }
            }
        });
    }
    let builds = builds_by_app(&replicas);
    for name in names {
        let spans = &builds[name];
        assert_eq!(spans.len(), 3, "{name}: {spans:?}");
        for pair in spans.windows(2) {
            assert!(pair[0].1 < pair[1].0, "{name}: builds overlap: {spans:?}");
        }
    }
    replicas
}

fn ten_apps() -> Vec<String> {
    (0..10).map(|i| unique(&format!("many{i}"))).collect()
}

/// Acceptance 1 with the controller double: every app's versions are 1, 2, 3.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn thirty_pushes_of_ten_apps_over_three_replicas() {
    require_services!();
    let names = ten_apps();
    let cluster = Cluster::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    thirty_pushes_over_three_replicas(&cluster, &names);
    for name in &names {
        assert_eq!(cluster.double.last_version(name), 3, "{name}");
    }
    assert_eq!(cluster.double.builds().len(), 30);
}

/// Acceptance 1 with the standalone controller on S3: the replicas share its state in
/// the bucket, and every app's releases are v1, v2, v3: unique, no gap.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn thirty_pushes_over_three_standalone_replicas_number_releases_without_gaps() {
    require_services!();
    let names = ten_apps();
    let cluster = Cluster::standalone();
    let replicas = thirty_pushes_over_three_replicas(&cluster, &names);
    for name in &names {
        assert_eq!(
            replicas[0].releases(name),
            ["v1.json", "v2.json", "v3.json"],
            "{name}"
        );
    }
}

/// Acceptance 2: two pushes of one app at once through two replicas: the second waits,
/// naming the builder running the first, then deploys; neither is lost.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn two_pushes_of_one_app_through_two_replicas_take_turns() {
    require_services!();
    let name = unique("turns");
    let cluster = Cluster::new(&[&name]);
    let (one, two) = (cluster.replica(), cluster.replica());
    let app = App::from_fixture("procfile-wait");

    let first = app.push_held(&one, &name, &cluster.key);
    // The second push brings a commit of its own (it sees the first's once it may run).
    app.commit_file("second.txt", "second push\n");
    let mut second = app.push_live(&two, &name, &cluster.key);
    second.wait_for(&format!(
        "Another push to {name} is in progress (on builder {}); waiting up to 5m",
        builder_id(&one)
    ));
    // Only the first push builds.
    assert_eq!(running_containers_of(&name).len(), 1);
    assert_eq!(metric(&one, "leases_held"), 1.0);

    release_waiting_build(&name);
    first.finish().assert_ok().assert_says("deployed");
    second.wait_for("waiting for /tmp/continue");
    release_waiting_build(&name);
    second
        .finish()
        .assert_ok()
        .assert_says(&format!(
            "Restored {name}'s repository from storage (1 bundle"
        ))
        .assert_says("deployed");

    assert_eq!(cluster.double.builds().len(), 2);
    assert_eq!(cluster.double.last_version(&name), 2);
    let (status, body) = http_get(two.http_port, "/readiness").expect("GET /readiness");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"leases\":\"ok\""), "{body}");
    // Each generated a host key of its own: clients behind one address would see it change.
    assert!(one
        .log()
        .contains("generating an SSH host key of this builder's own while the storage is shared"));
    assert_eq!(metric(&one, "leases_held"), 0.0);
    assert_eq!(metric(&two, "leases_taken_over_total"), 0.0);
    assert!(containers_of(&name).is_empty());
}

/// Acceptance 3: the replica holding an app's lease is SIGKILLed mid-build: its restart
/// sweeps the container, and a push through another replica takes the lease over once it
/// has not been renewed for the TTL, and deploys.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_killed_holder_frees_the_app_within_the_lease_ttl() {
    require_services!();
    let name = unique("killed");
    let cluster = Cluster::new(&[&name]);
    let (mut one, two) = (cluster.replica(), cluster.replica());
    let killed_id = builder_id(&one);

    let held = App::from_fixture("procfile-wait").push_held(&one, &name, &cluster.key);
    one.crash_and_restart();
    held.finish().assert_rejected();
    // The restart swept what the killed run left; nothing was released.
    assert!(containers_of(&name).is_empty());
    assert!(cluster.double.builds().is_empty());

    let started = std::time::Instant::now();
    let pushed = App::from_fixture("static-site").push(&two, &name, &cluster.key);
    println!(
        "deployed through another replica {:.1}s after the kill (lease TTL {LEASE_TTL})",
        started.elapsed().as_secs_f64()
    );
    pushed
        .assert_ok()
        .assert_says(&format!(
            "Another push to {name} is in progress (on builder {killed_id})"
        ))
        .assert_says(&format!("Done, {name}:v1 deployed"));
    assert_eq!(metric(&two, "leases_taken_over_total"), 1.0);
    assert!(two
        .log()
        .contains("took over a lease not renewed within its TTL"));
    assert_eq!(cluster.double.builds().len(), 1);
}

/// Acceptance 4: a replica whose link to the store is cut while it holds a lease stops
/// its build before the release and rejects the push saying why; another replica then
/// takes the app over and deploys it.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_replica_cut_from_the_store_stops_before_the_release() {
    require_services!();
    let name = unique("cut");
    let cluster = Cluster::new(&[&name]);
    let proxy = FaultProxy::for_url(&s3_endpoint());
    let (one, two) = (cluster.replica_via(&proxy.url()), cluster.replica());

    let held = App::from_fixture("procfile-wait").push_held(&one, &name, &cluster.key);
    proxy.set(Fault::Refuse);
    held.finish()
        .assert_rejected()
        .assert_says(&format!(
            " !     Build failed: stopped before the release, nothing was deployed: this builder lost its lease on {name}: not renewed for"
        ));
    assert!(cluster.double.builds().is_empty());
    assert_eq!(metric(&one, "leases_lost_total"), 1.0);
    let (status, body) = http_get(one.http_port, "/readiness").expect("GET /readiness");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"leases\":\"error: "), "{body}");
    assert!(eventually(Duration::from_secs(30), || containers_of(&name).is_empty()));

    App::from_fixture("static-site")
        .push(&two, &name, &cluster.key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    assert_eq!(cluster.double.builds().len(), 1);
    proxy.set(Fault::None);
}

/// Acceptance 5: a builder with an empty data dir brings its copy of a 50 MB repository up
/// to date from the store before the push, so a one-line change sends under 1 MB.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_fresh_replica_restores_the_repository_so_a_small_change_sends_little() {
    require_services!();
    let name = unique("bigrepo");
    let cluster = Cluster::new(&[&name]);
    let one = cluster.replica();
    let app = App::from_fixture("static-site");
    // 50 MB git cannot compress, kept out of the slug.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..50 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(app.dir.path().join("noise.bin"), noise).unwrap();
    app.commit_file(".slugignore", "noise.bin\n");
    app.push(&one, &name, &cluster.key).assert_ok();
    let index = format!("builder/repos/{name}/index.json");
    let s3 = S3::connect();
    assert!(eventually(Duration::from_secs(60), || s3
        .get(&cluster.bucket, &index)
        .is_some()));

    let fresh = cluster.replica();
    app.commit_file("index.html", "<h1>one line changed</h1>\n");
    let before = metric(&fresh, "ssh_received_bytes_total");
    app.push(&fresh, &name, &cluster.key)
        .assert_ok()
        .assert_says(&format!(
            "Restored {name}'s repository from storage (1 bundle, "
        ))
        .assert_says(&format!("Done, {name}:v2 deployed"));
    let sent = metric(&fresh, "ssh_received_bytes_total") - before;
    println!("the client sent {sent} bytes through the fresh replica");
    assert!(sent < 1_048_576.0, "the client sent {sent} bytes");
}
