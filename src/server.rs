//! Start-up and shutdown of `deis-builder serve`: wires settings into the services, binds
//! the listeners, sweeps what a previous run left behind, and stops cleanly on a signal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::ImportArgs;
use crate::config::{ControllerSettings, Settings, StorageSettings};
use deis_controller::{Controller, DeisController, StandaloneController};
use deis_executor::Engine;
use deis_frontdoor::admission::{Admission, Shutdown};
use deis_frontdoor::git::{GitServer, PushLimits};
use deis_frontdoor::ssh::SshServer;
use deis_pipeline::{ImportRequest, Pipeline, Stack, BUILD_UID};
use deis_slug::ProcessTypes;
use deis_storage::{LocalStore, ObjectStore, S3Settings, S3Store};
use deis_types::names::{AppName, ImageRef};

/// How long cancelled pushes get to clean up after the grace period.
const CLEANUP_GRACE: Duration = Duration::from_secs(15);
/// How long the leases let go at shutdown get to be released in the store.
const LEASE_RELEASE_GRACE: Duration = Duration::from_secs(5);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let data_dir = create_data_dir(&settings)?;
    let _data_dir_lock = crate::replica::lock_data_dir(&data_dir)?;
    let builder_id = crate::replica::builder_id(&data_dir)?;
    let (controller, store, engine) = services(&settings, &data_dir).await?;
    let leases = crate::replica::leases(&settings, &store, &builder_id);
    let stack = Stack::inspect(&engine, &settings.build)
        .await
        .context("stack")?;
    sweep_leftovers(&settings, &data_dir, &engine).await?;
    let build = &settings.build;
    let engine = if build.share_files {
        engine
            .share_files_if_possible(&build.work_dir, &build.stack_image, BUILD_UID as u32)
            .await
    } else {
        engine
    };
    let default_key = settings.host_keys == [settings.data_dir.join("ssh_host_ed25519_key")];
    if default_key && leases.is_some() && !settings.host_keys[0].exists() {
        tracing::warn!(
            path = %settings.host_keys[0].display(),
            "generating an SSH host key of this builder's own while the storage is shared: \
             replicas behind one address need the same host keys (--host-key), or clients \
             see the host key change"
        );
    }
    let host_keys = deis_frontdoor::ssh::keys::load_or_generate(&settings.host_keys, default_key)?;
    let listeners = Listeners::bind(&settings, &data_dir).await?;

    let pipeline = Arc::new(Pipeline {
        controller: controller.clone(),
        store: store.clone(),
        executor: Arc::new(engine.clone()),
        images: Arc::new(engine.clone()),
        settings: settings.build.clone(),
        stack: stack.clone(),
        warm: Default::default(),
        archives: Default::default(),
    });
    // Two stages: `draining` closes the doors; `abort` cancels what still runs once the
    // grace period is over.
    let shutdown = Shutdown::default();
    let limits = &settings.limits;
    let mut admission = Admission::new(limits.max_builds, shutdown.clone());
    if let Some(leases) = &leases {
        admission = admission.with_leases(leases.clone());
    }
    let exe = std::env::current_exe().context("cannot locate own executable")?;
    let git = GitServer::new(
        data_dir.join("repos"),
        listeners.hook_socket.clone(),
        exe,
        admission.clone(),
    )
    .with_limits(PushLimits {
        max_push_bytes: limits.max_push_bytes,
        lock_wait: limits.lock_wait,
    })
    .with_runner(pipeline.clone());
    let git = match &leases {
        Some(_) => git.with_saved_repos(deis_frontdoor::git::SavedRepos::new(
            store.clone(),
            limits.repo_restore_max_bytes,
        )),
        None => git,
    };

    tracing::info!(
        ssh = %deis_frontdoor::ssh::describe_listener(listeners.ssh.local_addr()?),
        http = %listeners.http.local_addr()?,
        controller = %controller.describe(),
        storage = %store.describe(),
        builder_id = %builder_id,
        leases = leases.is_some(),
        stack_image = %settings.build.stack_image,
        stack = %stack.name,
        build_network = %settings.build.network,
        build_ca = stack.ca_bundle.is_some(),
        "deis-builder ready"
    );

    let ssh = SshServer {
        config: Arc::new(deis_frontdoor::ssh::server_config(host_keys, limits)),
        controller: controller.clone(),
        git: git.clone(),
        max_connections: limits.max_connections,
        login_timeout: limits.login_timeout,
    };
    let health = crate::http::Health {
        store,
        leases: leases.clone(),
        engine: engine.clone(),
        controller,
        ssh_listening: Arc::new(AtomicBool::new(true)),
    };
    let tracker = TaskTracker::new();
    let imports = crate::http::Imports {
        admission,
        tasks: tracker.clone(),
        pipeline: pipeline.clone(),
        builder_key: settings
            .builder_key
            .as_ref()
            .map(|key| key.expose().to_owned()),
    };
    let running = Running::start(
        listeners,
        ssh,
        (git, pipeline),
        (health, imports),
        &shutdown,
    );

    wait_for_signal().await;
    running
        .stop(&shutdown, limits.shutdown_grace, &engine)
        .await;
    if let Some(leases) = &leases {
        leases.settle(LEASE_RELEASE_GRACE).await;
    }
    Ok(())
}

fn create_data_dir(settings: &Settings) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    settings
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve data dir {}", settings.data_dir.display()))
}

/// Everything `serve` listens on, bound before anything is served so that a taken port
/// stops start-up with a clear error.
struct Listeners {
    ssh: TcpListener,
    http: TcpListener,
    hook: UnixListener,
    hook_socket: PathBuf,
}

impl Listeners {
    async fn bind(settings: &Settings, data_dir: &Path) -> anyhow::Result<Listeners> {
        let run_dir = data_dir.join("run");
        std::fs::create_dir_all(&run_dir).context("cannot create run dir")?;
        let hook_socket = run_dir.join("hook.sock");
        let _ = std::fs::remove_file(&hook_socket);
        let hook = UnixListener::bind(&hook_socket)
            .with_context(|| format!("cannot bind {}", hook_socket.display()))?;
        restrict(&hook_socket)?;
        let ssh = TcpListener::bind(settings.ssh_addr)
            .await
            .with_context(|| format!("cannot listen for SSH on {}", settings.ssh_addr))?;
        let http = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", settings.http_addr))?;
        Ok(Listeners {
            ssh,
            http,
            hook,
            hook_socket,
        })
    }
}

/// The served listeners, and how to close them in order.
struct Running {
    tracker: TaskTracker,
    /// For the work pushes leave for after their answer: repository saves, source tarballs.
    git: GitServer,
    pipeline: Arc<Pipeline>,
    hooks: tokio::task::JoinHandle<()>,
    close_hooks: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    close_http: CancellationToken,
}

impl Running {
    /// Serves SSH, the hook socket (pushes reach `pipeline` through it) and HTTP. Running
    /// work is tracked by the imports' tracker, which pushes share.
    fn start(
        listeners: Listeners,
        ssh: SshServer,
        (git, pipeline): (GitServer, Arc<Pipeline>),
        (health, imports): (crate::http::Health, crate::http::Imports),
        shutdown: &Shutdown,
    ) -> Running {
        let tracker = imports.tasks.clone();
        // The hook socket stays open until the end: running pushes still need it, and
        // pushes that arrive during shutdown are told the builder is restarting.
        let close_hooks = CancellationToken::new();
        let hooks = tokio::spawn(deis_frontdoor::git::hook::serve(
            listeners.hook,
            git.clone(),
            pipeline.clone(),
            close_hooks.clone(),
            tracker.clone(),
        ));
        // Health reports SSH down once the accept loop has stopped (shutdown, or a failure).
        let ssh_listening = health.ssh_listening.clone();
        let accept_loop = ssh.run(listeners.ssh, shutdown.draining.clone(), tracker.clone());
        tracker.spawn(async move {
            accept_loop.await;
            ssh_listening.store(false, Ordering::Relaxed);
        });
        // HTTP stays up until the very end, so health reports the drain and metrics stay
        // readable while running pushes finish.
        let close_http = CancellationToken::new();
        let http = tokio::spawn(crate::http::serve(
            listeners.http,
            health,
            imports,
            close_http.clone(),
        ));
        Running {
            tracker,
            git,
            pipeline,
            hooks,
            close_hooks,
            http,
            close_http,
        }
    }

    /// Drains: no new work, running work gets `grace`, then is cancelled and cleaned up;
    /// the containers are swept, and HTTP closes last.
    async fn stop(self, shutdown: &Shutdown, grace: Duration, engine: &Engine) {
        tracing::info!("shutting down: no new connections; running pushes get {grace:?}");
        shutdown.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; cancelling the remaining pushes");
            shutdown.abort.cancel();
            // Cancelled builds remove their containers and roll back their objects.
            let _ = tokio::time::timeout(CLEANUP_GRACE, self.tracker.wait()).await;
        }
        // What deployed pushes left for after their answer, at once: repository saves
        // (replicas) and source tarballs.
        let (saved, archived) = tokio::join!(
            self.git.wait_for_saves(grace),
            self.pipeline.archives.wait(grace)
        );
        if !saved {
            tracing::warn!(
                "repository saves still running at exit; the next push of those apps saves again"
            );
        }
        if !archived {
            tracing::warn!("source tarballs still being stored at exit; they are lost");
        }
        shutdown.abort.cancel();
        self.close_hooks.cancel();
        let _ = self.hooks.await;
        sweep_on_exit(engine).await;
        self.close_http.cancel();
        // Graceful: an answer being written is finished (imports ran in the tracker, so
        // they are over), but a hung connection must not hold the exit.
        let _ = tokio::time::timeout(CLEANUP_GRACE, self.http).await;
    }
}

/// Cancelled builds remove their containers from a background task; the process must not
/// exit under it. Sweeping our label until nothing is left (a removal already under way
/// answers 409 until it is done) is also the backstop for any removal that failed.
async fn sweep_on_exit(engine: &Engine) {
    let deadline = tokio::time::Instant::now() + CLEANUP_GRACE;
    loop {
        match engine.sweep().await {
            Ok(removed) if removed.is_empty() => return,
            Ok(removed) => {
                tracing::info!(count = removed.len(), containers = ?removed, "removed build containers on shutdown");
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(%error, "cannot sweep build containers on shutdown");
                return;
            }
            Err(error) => tracing::debug!(%error, "build containers still being removed"),
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("build containers still there at exit");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes what a killed previous run left: its containers and untagged images (by the
/// instance label), and on disk git quarantines, git lock files and temp files. Logs one
/// event per kind with the count. Per-app push locks live in memory: none can be stale.
async fn sweep_leftovers(
    settings: &Settings,
    data_dir: &Path,
    engine: &Engine,
) -> anyhow::Result<()> {
    let containers = engine
        .sweep()
        .await
        .context("sweeping leftover containers")?;
    deis_metrics::containers_swept(containers.len());
    if !containers.is_empty() {
        tracing::warn!(kind = "containers", count = containers.len(), ids = ?containers, "removed containers left by a previous run");
    }
    // Images are a nicety: an engine that cannot list them must not stop the start.
    match engine.sweep_images().await {
        Ok(images) => {
            deis_metrics::images_swept(images.len());
            if !images.is_empty() {
                tracing::warn!(kind = "images", count = images.len(), ids = ?images, "removed images left by a previous run");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot sweep leftover images"),
    }
    let storage_temp = match &settings.storage {
        StorageSettings::Local(dir) => dir
            .canonicalize()
            .ok()
            .filter(|dir| dir.starts_with(data_dir))
            .map(|dir| dir.join(deis_storage::LOCAL_TEMP_DIR)),
        StorageSettings::S3 { .. } => None,
    };
    let (data, work) = (data_dir.to_owned(), settings.build.work_dir.clone());
    let disk = tokio::task::spawn_blocking(move || {
        deis_frontdoor::sweep::sweep_data_dir(&data, &work, storage_temp.as_deref())
    })
    .await
    .context("start-up sweep")?;
    let kinds = [
        ("git quarantine dirs", disk.quarantine_dirs),
        ("git lock files", disk.git_lock_files),
        ("git temp files", disk.git_temp_files),
        ("push workspaces", disk.workspaces),
        ("storage temp files", disk.storage_temp_files),
    ];
    for (kind, count) in kinds {
        if count > 0 {
            tracing::warn!(kind, count, "removed {kind} left by a previous run");
        }
    }
    Ok(())
}

/// The controller, object store and engine both `serve` and `pull` use.
async fn services(
    settings: &Settings,
    data_dir: &Path,
) -> anyhow::Result<(Arc<dyn Controller>, Arc<dyn ObjectStore>, Engine)> {
    let store = store(settings).await?;
    let controller = controller(settings, data_dir, &store).await?;
    let engine = Engine::connect(
        instance_id(data_dir),
        settings.build.timeout + Duration::from_secs(600),
    )
    .await
    .context("Docker engine")?;
    Ok((controller, store, engine))
}

/// `deis-builder pull`: imports one image and prints the progress. Returns the release.
pub async fn pull(settings: Settings, args: ImportArgs) -> anyhow::Result<u64> {
    let data_dir = create_data_dir(&settings)?;
    let request = ImportRequest {
        app: AppName::parse(&args.app).context("--app")?,
        image: ImageRef::parse(&args.image)?,
        user: args.user,
        process_types: match &args.procfile {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                deis_slug::parse_procfile(&text)?
            }
            None => ProcessTypes::default(),
        },
        source_credentials: match (args.source_username, args.source_password) {
            (Some(user), Some(password)) => Some((user, crate::config::Secret::new(password))),
            (None, None) => None,
            _ => anyhow::bail!("give both --source-username and --source-password, or neither"),
        },
    };
    let (controller, store, engine) = services(&settings, &data_dir).await?;
    let pipeline = Pipeline {
        controller,
        store,
        executor: Arc::new(engine.clone()),
        images: Arc::new(engine),
        settings: settings.build.clone(),
        // An import runs no build: it needs neither the stack nor the build network.
        stack: Stack::for_imports_only(),
        warm: Default::default(),
        archives: Default::default(),
    };
    let (out, mut rx) = deis_pipeline::push::Output::channel(64);
    let printer = tokio::spawn(async move {
        use std::io::Write;
        while let Some(chunk) = rx.recv().await {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&chunk).and_then(|()| stdout.flush());
        }
    });
    // Nothing cancels a one-off import but its --build-timeout.
    let result = pipeline
        .import(&request, None, &out, &CancellationToken::new())
        .await;
    drop(out);
    let _ = printer.await;
    Ok(result?.version)
}

/// The controller; a standalone one keeps its state in the store when that is shared
/// (S3), after moving this data dir's state there (once: the move skips what is there).
async fn controller(
    settings: &Settings,
    data_dir: &Path,
    store: &Arc<dyn ObjectStore>,
) -> anyhow::Result<Arc<dyn Controller>> {
    Ok(match &settings.controller {
        ControllerSettings::Standalone { authorized_keys } => {
            let standalone =
                StandaloneController::new(data_dir.to_owned(), authorized_keys.clone());
            if !matches!(settings.storage, StorageSettings::S3 { .. }) {
                return Ok(Arc::new(standalone));
            }
            let state = crate::replica::StandaloneState(store.clone());
            let standalone = standalone.in_store(Arc::new(state));
            let moved = standalone
                .move_into_store()
                .await
                .context("moving the standalone controller's state into the store")?;
            if moved != Default::default() {
                tracing::warn!(
                    authorized_keys = moved.authorized_keys,
                    configs = moved.configs,
                    releases = moved.releases,
                    "moved the standalone controller's state from the data dir into the store; \
                     the store's copy is used from now on"
                );
            }
            Arc::new(standalone)
        }
        ControllerSettings::Deis {
            url,
            builder_key,
            timeout,
        } => Arc::new(
            DeisController::new(url, builder_key.expose().to_owned(), *timeout)
                .context("controller")?,
        ),
    })
}

/// The object store the settings name (also used by `purge-cache`).
pub async fn store(settings: &Settings) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(match &settings.storage {
        StorageSettings::Local(dir) => Arc::new(
            LocalStore::open(dir.clone())
                .await
                .context("local storage")?,
        ),
        StorageSettings::S3 {
            bucket,
            endpoint,
            path_style,
        } => {
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let s3 = S3Settings {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
                region: env("AWS_REGION")
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".to_owned()),
                access_key_id: env("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID is not set")?,
                secret_access_key: env("AWS_SECRET_ACCESS_KEY")
                    .context("AWS_SECRET_ACCESS_KEY is not set")?,
                session_token: env("AWS_SESSION_TOKEN"),
                path_style: *path_style,
            };
            Arc::new(S3Store::connect(s3).await.context("S3 storage")?)
        }
    })
}

/// Identifies this builder's containers in a shared engine: derived from the data dir,
/// so a restarted builder finds (and sweeps) what its previous run left.
fn instance_id(data_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

fn restrict(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
