//! Configuration: built-in defaults, then `config/default.toml` (or the file named by
//! `HONE_CONFIG`), then `HONE_*` environment variables, later ones winning.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use hone_store::{ArtifactStore, LocalArtifactStore, Location, ObjectArtifactStore, S3Settings};
use serde::{Deserialize, Serialize};

/// The repository this binary was built from; the set-up script installs base models
/// there, so a development build finds them wherever it is started from.
const REPO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Postgres URL; the database is created when missing (`hone all`, `hone migrate`).
    pub database_url: String,
    /// Address the API listens on.
    pub listen: String,
    /// Local state: the artifacts (unless `artifact_store` puts them elsewhere), scratch
    /// files of training, the cache of a remote store.
    pub data_dir: PathBuf,
    /// Where uploads, checkpoints, cached features, result files and published models
    /// are kept: `file://<dir>` (empty: `file://<data_dir>/artifacts`) for one machine,
    /// or `s3://<bucket>/<prefix>` for processes on many machines (credentials from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`).
    pub artifact_store: String,
    /// S3: the endpoint of an S3-compatible server (MinIO, Ceph, …); empty for AWS.
    pub s3_endpoint: String,
    pub s3_region: String,
    /// S3: allow a plain `http://` endpoint.
    pub s3_allow_http: bool,
    /// S3: local copies of models and checkpoints (empty: `<data_dir>/cache`), at most
    /// `cache_max_bytes`, least recently used removed first.
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// Base models: one Hugging Face directory each.
    pub models_dir: PathBuf,
    /// `auto` (the first CUDA device when there is one), `cpu`, `cuda` or `cuda:<n>`.
    pub device: String,
    /// Jobs trained at once by one worker process.
    pub worker_concurrency: usize,
    /// libtorch intra-op threads of the inference thread; 0 picks them for the cores
    /// this process may use ([`Config::threads`]).
    pub inference_threads: usize,
    /// libtorch intra-op threads of each training job; 0 picks them for the cores.
    pub training_threads: usize,
    /// The one thread count of earlier versions: when set, it stands for either of the
    /// two above that is left at 0, so an existing `HONE_THREADS` keeps working.
    pub threads: usize,
    /// Bytes a `partial` text job may keep in memory for the outputs of its frozen
    /// layers, computed once instead of every step; larger jobs run them every step.
    pub frozen_cache_bytes: u64,
    /// A running job's lease; a worker that misses heartbeats this long loses its job
    /// to the queue.
    pub lease_seconds: u64,
    /// How often idle workers look for jobs when no notification arrives.
    pub poll_interval_ms: u64,
    /// Attempts per job before it fails for good (at least 1).
    pub job_max_attempts: i32,
    /// The longest one attempt may train, in seconds (0: no limit).
    pub job_max_seconds: u64,
    /// Which checkpoints an ended job keeps: `best_and_last` (and the published) or
    /// `all`.
    pub checkpoint_retention: String,
    /// Bytes of one project's feature cache (frozen-encoder outputs kept for later jobs
    /// and estimates); least recently used entries go past it.
    pub feature_cache_max_bytes_per_project: u64,
    /// Hours an `Idempotency-Key` is remembered; a key used again later is a new key.
    pub idempotency_key_hours: u64,
    /// Largest accepted dataset upload, in bytes.
    pub max_upload_bytes: u64,
    /// Most examples in one dataset.
    pub max_examples: u64,
    /// Image uploads: caps on a zip's entries, on the bytes it decompresses to and on
    /// one entry's compression ratio (zip bombs), and the bounds of an image in pixels
    /// (shortest side, longest side, width × height); `DatasetLimits` says why each.
    pub max_archive_entries: u64,
    pub max_uncompressed_bytes: u64,
    pub max_compression_ratio: u64,
    pub min_image_side: u32,
    pub max_image_side: u32,
    pub max_image_pixels: u64,
    /// The pixel cap of an image sent to predict (at most `max_image_pixels`): a model
    /// sees it resized to a few hundred pixels a side, so large photos only cost
    /// decoding time and memory on the request path.
    pub predict_max_image_pixels: u64,
    /// Fine-tuned models kept loaded for predictions.
    pub predict_cache_size: usize,
    /// Predict requests admitted to the inference queue at once; more wait for a place.
    pub predict_max_pending: usize,
    /// Of those, the most one project may hold; its further requests wait in a line
    /// of their own, so one tenant cannot take every place.
    pub predict_max_pending_per_project: usize,
    /// How long a predict request waits for a place in the inference queue before it
    /// is answered 429.
    pub predict_queue_timeout_ms: u64,
    /// Inputs per forward pass when predicting.
    pub predict_batch_size: usize,
    /// Inputs per predict request.
    pub max_predict_inputs: usize,
    /// Largest body of a JSON request (jobs, transferability, …), in bytes; larger
    /// ones get 413 before they are read.
    pub max_json_body_bytes: u64,
    /// Largest body of a predict request, in bytes; 0 sizes it for
    /// `max_predict_inputs` of the largest input ([`Config::predict_body_limit`]).
    pub max_predict_body_bytes: u64,
    /// A connection that has not sent a whole request header this long after it
    /// opened (or after its previous request) is closed.
    pub header_read_timeout_ms: u64,
    /// A request whose answer is not ready this long after its header arrived gets
    /// 408; uploads included, so it must cover the largest upload at the slowest
    /// client you serve.
    pub request_timeout_secs: u64,
    /// A request body that sends nothing for this long gets 408.
    pub body_read_timeout_secs: u64,
    /// Connections served at once; past it new ones wait in the listen queue.
    pub max_connections: usize,
    /// Live event streams (`…/events?stream=true`) open at once on this process, in all
    /// and per project; past either, 429.
    pub max_event_streams: usize,
    pub max_event_streams_per_project: usize,
    /// Uploads received at once, in all and per project; past either, 429. Each holds
    /// at most one blocking thread while its chunks are validated.
    pub max_concurrent_uploads: usize,
    pub max_concurrent_uploads_per_project: usize,
    /// `/metrics` answers anyone; by default it asks for a valid API key.
    pub metrics_public: bool,
    /// `hone worker` only: serve `/metrics` on this address (`hone serve` and `hone all`
    /// serve it with the API). Empty: not served.
    pub worker_metrics_listen: String,
    /// How long a looked-up API key (known, unknown or revoked) is remembered:
    /// revoking a key takes effect within this time.
    pub api_key_cache_ms: u64,
    /// Queued and running jobs per project; more creates get 429 (a project's own
    /// `max_active_jobs` overrides it).
    pub max_active_jobs_per_project: i64,
    /// Bytes of stored files per project; uploads past it get 413 (a project's own
    /// `max_stored_bytes` overrides it).
    pub max_stored_bytes_per_project: i64,
    /// Webhooks: endpoints one project may have; creating more gets 409.
    pub max_webhooks_per_project: i64,
    /// Webhooks: send to plain `http://` URLs too (by default only `https://`).
    pub webhook_allow_http: bool,
    /// Webhooks: send to URLs that are or resolve to loopback, private, link-local
    /// (cloud metadata) or other non-public addresses (refused by default: SSRF).
    pub webhook_allow_private_targets: bool,
    /// Webhooks: the wait after a first failed attempt; each later wait is 6 times the
    /// one before (capped at 12 h), ±20%.
    pub webhook_retry_first_delay_ms: u64,
    /// Webhooks: attempts per delivery, the first included, before it is failed.
    pub webhook_max_attempts: u32,
    /// Webhooks: limits of one attempt, on connecting and on the whole exchange.
    pub webhook_connect_timeout_ms: u64,
    pub webhook_timeout_ms: u64,
    /// Webhooks: attempts this process makes at once; 0: this process delivers none
    /// (another `hone` process must).
    pub webhook_delivery_concurrency: usize,
    /// `text` or `json` logs.
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        let limits = hone_domain::dataset::DatasetLimits::default();
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/hone".into(),
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from(REPO_DIR).join(".data"),
            artifact_store: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_allow_http: false,
            cache_dir: PathBuf::new(),
            cache_max_bytes: 20 * 1024 * 1024 * 1024,
            models_dir: PathBuf::from(REPO_DIR).join(".deps/models"),
            device: "auto".into(),
            worker_concurrency: 1,
            inference_threads: 0,
            training_threads: 0,
            threads: 0,
            frozen_cache_bytes: hone_train::DEFAULT_FROZEN_CACHE_BYTES,
            lease_seconds: 60,
            poll_interval_ms: 2000,
            job_max_attempts: 3,
            job_max_seconds: 86_400,
            checkpoint_retention: "best_and_last".into(),
            feature_cache_max_bytes_per_project: 2 << 30,
            idempotency_key_hours: 24,
            max_upload_bytes: 512 * 1024 * 1024,
            max_examples: 1_000_000,
            max_archive_entries: limits.max_archive_entries,
            max_uncompressed_bytes: limits.max_uncompressed_bytes,
            max_compression_ratio: limits.max_compression_ratio,
            min_image_side: limits.min_image_side,
            max_image_side: limits.max_image_side,
            max_image_pixels: limits.max_image_pixels,
            predict_max_image_pixels: 16_000_000,
            predict_cache_size: 4,
            predict_max_pending: 64,
            predict_max_pending_per_project: 32,
            predict_queue_timeout_ms: 5000,
            predict_batch_size: 32,
            max_predict_inputs: 256,
            max_json_body_bytes: 1024 * 1024,
            max_predict_body_bytes: 0,
            header_read_timeout_ms: 10_000,
            request_timeout_secs: 600,
            body_read_timeout_secs: 30,
            max_connections: 4096,
            max_event_streams: 1000,
            max_event_streams_per_project: 20,
            max_concurrent_uploads: 16,
            max_concurrent_uploads_per_project: 4,
            metrics_public: false,
            worker_metrics_listen: String::new(),
            api_key_cache_ms: 5000,
            max_active_jobs_per_project: 16,
            max_stored_bytes_per_project: 10 * 1024 * 1024 * 1024,
            max_webhooks_per_project: 20,
            webhook_allow_http: false,
            webhook_allow_private_targets: false,
            webhook_retry_first_delay_ms: 5000,
            webhook_max_attempts: 8,
            webhook_connect_timeout_ms: 5000,
            webhook_timeout_ms: 15000,
            webhook_delivery_concurrency: 8,
            log_format: "text".into(),
        }
    }
}

/// The variable naming a configuration file to read instead of `config/default.toml`;
/// the one `HONE_*` variable that is not a configuration key.
pub const CONFIG_FILE_VAR: &str = "HONE_CONFIG";

/// `HONE_*` variables that are not server settings: the config file's name, and the
/// client commands' server and key (`hone jobs …`), so that a shell that exported the
/// banner's `HONE_API_KEY` still starts the server.
const NOT_SETTINGS: [&str; 3] = ["config", "url", "api_key"];

impl Config {
    /// The limits of projects that set none of their own.
    pub fn project_limits(&self) -> hone_api::auth::ProjectLimits {
        hone_api::auth::ProjectLimits {
            max_active_jobs: self.max_active_jobs_per_project,
            max_stored_bytes: self.max_stored_bytes_per_project,
        }
    }

    /// What a value's type cannot say: refused at start-up, not at first use.
    pub fn validate(&self) -> Result<(), String> {
        if self.job_max_attempts < 1 {
            return Err(format!(
                "job_max_attempts must be at least 1, not {}",
                self.job_max_attempts
            ));
        }
        if !matches!(self.checkpoint_retention.as_str(), "best_and_last" | "all") {
            return Err(format!(
                "checkpoint_retention must be best_and_last or all, not {:?}",
                self.checkpoint_retention
            ));
        }
        if self.idempotency_key_hours == 0 {
            return Err("idempotency_key_hours must be at least 1".into());
        }
        self.artifact_location().map(|_| ())
    }

    pub fn load() -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match std::env::var_os(CONFIG_FILE_VAR) {
            Some(path) => figment = figment.merge(Toml::file_exact(PathBuf::from(path))),
            None => {
                figment = figment.merge(Toml::file(
                    PathBuf::from(REPO_DIR).join("config/default.toml"),
                ))
            }
        }
        figment
            .merge(Env::prefixed("HONE_").ignore(&NOT_SETTINGS))
            .extract()
            .map_err(Box::new)
    }

    /// The database URL without its password, for messages.
    pub fn database_url_redacted(&self) -> String {
        match url_password_span(&self.database_url) {
            Some((start, end)) => format!(
                "{}***{}",
                &self.database_url[..start],
                &self.database_url[end..]
            ),
            None => self.database_url.clone(),
        }
    }
}

/// Bytes the largest predict input takes in a JSON body: a text of
/// [`MAX_PREDICT_CHARS`] characters (1 byte each for most text) and its quotes, or a
/// base64 image of about 75 KiB.
pub const PREDICT_INPUT_BYTES: u64 = 100 * 1024;
/// Characters in one predict input.
pub const MAX_PREDICT_CHARS: usize = 100_000;

impl Config {
    /// The body limit of predict requests: `max_predict_body_bytes`, or when 0,
    /// `max_predict_inputs` inputs of [`PREDICT_INPUT_BYTES`] each (25 MiB for 256).
    pub fn predict_body_limit(&self) -> u64 {
        match self.max_predict_body_bytes {
            0 => (self.max_predict_inputs.max(1) as u64).saturating_mul(PREDICT_INPUT_BYTES),
            n => n,
        }
    }
}

impl Config {
    /// The artifact store as configured; checked by [`Location::parse`].
    pub fn artifact_location(&self) -> Result<Location, String> {
        if self.artifact_store.is_empty() {
            return Ok(Location::File(self.data_dir.join("artifacts")));
        }
        Location::parse(&self.artifact_store).map_err(|e| format!("artifact_store: {e}"))
    }

    /// Opens the configured artifact store (not yet checked: see `ArtifactStore::check`).
    pub async fn artifact_store(&self) -> anyhow::Result<Arc<dyn ArtifactStore>> {
        let location = self.artifact_location().map_err(anyhow::Error::msg)?;
        Ok(match location {
            Location::File(dir) => {
                Arc::new(LocalArtifactStore::new(&dir).await.with_context(|| {
                    format!("cannot use the artifact directory {}", dir.display())
                })?)
            }
            Location::S3 { bucket, prefix } => {
                let cache_dir = if self.cache_dir.as_os_str().is_empty() {
                    self.data_dir.join("cache")
                } else {
                    self.cache_dir.clone()
                };
                let settings = S3Settings {
                    bucket,
                    prefix,
                    endpoint: (!self.s3_endpoint.is_empty()).then(|| self.s3_endpoint.clone()),
                    region: self.s3_region.clone(),
                    allow_http: self.s3_allow_http,
                    cache_dir,
                    cache_max_bytes: self.cache_max_bytes,
                    static_credentials: None,
                };
                Arc::new(ObjectArtifactStore::s3(&settings).with_context(|| {
                    format!(
                        "cannot configure the artifact store {}",
                        self.artifact_store
                    )
                })?)
            }
        })
    }
}

/// libtorch intra-op threads for each role of one process, resolved by [`Config::threads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threads {
    /// The inference thread's (predict) while a training job or estimate runs in the
    /// process.
    pub inference: usize,
    /// The inference thread's while none does: every core, unless set.
    pub inference_idle: usize,
    /// Each training job's.
    pub training: usize,
}

impl Config {
    /// The configured thread counts, with 0 ("auto") resolved for `cores` cores and the
    /// roles this process plays.
    ///
    /// libtorch's threads wait for each other at every operation, so two teams on the
    /// same cores slow each other far more than their share (BENCHMARKS.md, "Serving").
    /// So while training or an estimate runs in the process, inference keeps one thread
    /// per four cores (at least one) and the batch work has the rest; while none runs,
    /// inference takes every core. A worker alone shares every core among its concurrent
    /// jobs. A count that is set is used as it is, idle or not.
    pub fn threads(&self, cores: usize, serving: bool, training: bool) -> Threads {
        let cores = cores.max(1);
        let set = |n: usize| if n > 0 { n } else { self.threads };
        let (inference, inference_idle) = match set(self.inference_threads) {
            0 => ((cores / 4).max(1), cores),
            n => (n, n),
        };
        let training_cores = if serving && training {
            cores.saturating_sub(inference).max(1)
        } else {
            cores
        };
        let training = match set(self.training_threads) {
            0 => (training_cores / self.worker_concurrency.max(1)).max(1),
            n => n,
        };
        Threads {
            inference,
            inference_idle,
            training,
        }
    }
}

impl Config {
    /// The worker's settings, its jobs trained on `device` with `training_threads`.
    pub fn worker_settings(
        &self,
        device: tch::Device,
        training_threads: usize,
        batch_work: hone_train::threads::BatchWork,
    ) -> hone_worker::WorkerSettings {
        hone_worker::WorkerSettings {
            id: hone_worker::worker_id(),
            concurrency: self.worker_concurrency.max(1),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(50)),
            lease: Duration::from_secs(self.lease_seconds.max(2)),
            models_dir: self.models_dir.clone(),
            scratch_dir: self.data_dir.join("scratch"),
            device,
            threads: training_threads,
            batch_work,
            frozen_cache_bytes: self.frozen_cache_bytes,
            max_attempt_time: (self.job_max_seconds > 0)
                .then(|| Duration::from_secs(self.job_max_seconds)),
            keep_all_checkpoints: self.checkpoint_retention == "all",
            feature_cache_max_bytes: self.feature_cache_max_bytes_per_project,
        }
    }
}

impl Config {
    /// Which webhook URLs are accepted and delivered to.
    pub fn webhook_policy(&self) -> hone_domain::webhook::TargetPolicy {
        hone_domain::webhook::TargetPolicy {
            allow_http: self.webhook_allow_http,
            allow_private: self.webhook_allow_private_targets,
        }
    }

    /// The webhook deliverer's settings, or `None` when this process delivers none.
    pub fn webhook_settings(&self) -> Option<hone_webhooks::DeliverySettings> {
        (self.webhook_delivery_concurrency > 0).then(|| hone_webhooks::DeliverySettings {
            id: hone_worker::worker_id(),
            policy: self.webhook_policy(),
            schedule: hone_domain::webhook::RetrySchedule {
                first_delay: Duration::from_millis(self.webhook_retry_first_delay_ms.max(1)),
                max_attempts: self.webhook_max_attempts.max(1),
            },
            limits: hone_webhooks::SendLimits {
                connect_timeout: Duration::from_millis(self.webhook_connect_timeout_ms.max(1)),
                timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
            },
            concurrency: self.webhook_delivery_concurrency,
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(50)),
        })
    }
}

/// The byte range of the password in `scheme://user:password@host/...`.
fn url_password_span(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let at = authority_start + url[authority_start..].find('@')?;
    let colon = authority_start + url[authority_start..at].find(':')?;
    Some((colon + 1, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_at_start_up_by_name() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(
            Config::default().artifact_location(),
            Ok(Location::File(Config::default().data_dir.join("artifacts")))
        );
        let bad = [
            Config {
                job_max_attempts: 0,
                ..Config::default()
            },
            Config {
                idempotency_key_hours: 0,
                ..Config::default()
            },
            Config {
                checkpoint_retention: "best".into(),
                ..Config::default()
            },
            Config {
                artifact_store: "s3://Not_A_Bucket/x".into(),
                ..Config::default()
            },
            Config {
                artifact_store: "/var/lib/hone".into(),
                ..Config::default()
            },
        ];
        for (c, key) in bad.iter().zip([
            "job_max_attempts",
            "idempotency_key_hours",
            "checkpoint_retention",
            "artifact_store",
            "artifact_store",
        ]) {
            let e = c.validate().expect_err(key);
            assert!(e.contains(key), "{e}");
        }
        let s3 = Config {
            artifact_store: "s3://hone/prod".into(),
            ..Config::default()
        };
        assert_eq!(
            s3.artifact_location(),
            Ok(Location::S3 {
                bucket: "hone".into(),
                prefix: "prod".into()
            })
        );
    }

    #[test]
    fn passwords_are_redacted() {
        let mut c = Config::default();
        assert_eq!(c.database_url_redacted(), c.database_url);
        c.database_url = "postgres://u:secret@h:5432/db".into();
        assert_eq!(c.database_url_redacted(), "postgres://u:***@h:5432/db");
    }

    #[test]
    fn webhooks_are_https_to_public_addresses_with_the_issue_s_schedule_by_default() {
        let c = Config::default();
        assert_eq!(c.webhook_policy(), Default::default());
        let s = c.webhook_settings().expect("delivers");
        assert_eq!(s.schedule, hone_domain::webhook::RetrySchedule::default());
        let none = Config {
            webhook_delivery_concurrency: 0,
            ..Config::default()
        };
        assert!(none.webhook_settings().is_none());
    }

    #[test]
    fn the_predict_body_limit_follows_the_inputs_unless_set() {
        let c = Config::default();
        assert_eq!(c.predict_body_limit(), 256 * 100 * 1024);
        let c = Config {
            max_predict_inputs: 8,
            ..Config::default()
        };
        assert_eq!(c.predict_body_limit(), 8 * 100 * 1024);
        let c = Config {
            max_predict_body_bytes: 5000,
            ..Config::default()
        };
        assert_eq!(c.predict_body_limit(), 5000);
    }

    #[test]
    fn automatic_threads_split_the_cores_between_roles() {
        let c = Config::default();
        let t = |cores, serving, training| c.threads(cores, serving, training);
        let threads = |inference, inference_idle, training| Threads {
            inference,
            inference_idle,
            training,
        };
        // API and worker together: while a job trains, inference keeps its share and
        // training the rest; while none does, inference has every core.
        assert_eq!(t(2, true, true), threads(1, 2, 1));
        assert_eq!(t(16, true, true), threads(4, 16, 12));
        // Alone, each role has every core.
        assert_eq!(t(16, false, true).training, 16);
        assert_eq!(t(2, true, false).inference_idle, 2);
        // Concurrent jobs share the training cores.
        let c = Config {
            worker_concurrency: 4,
            ..Config::default()
        };
        assert_eq!(c.threads(16, false, true).training, 4);
        assert_eq!(c.threads(2, false, true).training, 1);
        // Set counts win, idle or not.
        let c = Config {
            inference_threads: 2,
            training_threads: 3,
            ..Config::default()
        };
        assert_eq!(c.threads(2, true, true), threads(2, 2, 3));
        // The old single count still sets both, unless one is set itself.
        let c = Config {
            threads: 1,
            training_threads: 2,
            ..Config::default()
        };
        assert_eq!(c.threads(16, true, true), threads(1, 1, 2));
    }

    // `Jail::expect_with` fixes the closure's error type to figment's own.
    #[allow(clippy::result_large_err)]
    #[test]
    fn environment_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HONE_LISTEN", "127.0.0.1:9999");
            jail.set_env("HONE_WORKER_CONCURRENCY", "3");
            jail.set_env("HONE_MODELS_DIR", "/m");
            jail.set_env("HONE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true");
            jail.set_env("HONE_WEBHOOK_ALLOW_HTTP", "true");
            let c = Config::load().map_err(|e| *e)?;
            assert_eq!(
                c.webhook_policy(),
                hone_domain::webhook::TargetPolicy {
                    allow_http: true,
                    allow_private: true
                }
            );
            assert_eq!(c.listen, "127.0.0.1:9999");
            assert_eq!(c.worker_concurrency, 3);
            assert_eq!(c.models_dir, PathBuf::from("/m"));
            Ok(())
        });
    }

    /// Every `HONE_*` variable named in a file under docker/, with the value the line
    /// gives it (`NAME: value`, `NAME=value`, or a Kubernetes `- name: NAME` followed by
    /// `value: …`; its first word), unless that value is a shell or compose expansion.
    fn docker_variables() -> Vec<(String, String, Option<String>)> {
        fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read docker/").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    files(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        fn value_after(rest: &str) -> Option<String> {
            let rest = rest.trim_start();
            let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix('='))?;
            // The first word: a shell line or a Dockerfile ENV goes on after it.
            let word = rest.split_whitespace().next().unwrap_or("");
            let value = word.trim_matches(|c| c == '"' || c == '\'');
            let expansion = value.contains('$') || value.contains('{');
            (!value.is_empty() && !expansion).then(|| value.to_owned())
        }
        let mut paths = Vec::new();
        files(&PathBuf::from(REPO_DIR).join("docker"), &mut paths);
        let mut found = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("docker/ files are text");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let mut from = 0;
                while let Some(at) = line[from..].find("HONE_").map(|at| from + at) {
                    let tail = &line[at..];
                    let len = tail
                        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(tail.len());
                    from = at + len.max(5);
                    let before = line[..at].chars().next_back();
                    if len <= "HONE_".len()
                        || before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    {
                        continue;
                    }
                    let name = &tail[..len];
                    let value = if line[..at].trim_end().ends_with("name:") {
                        lines
                            .get(i + 1)
                            .and_then(|next| next.trim().strip_prefix("value"))
                            .and_then(value_after)
                    } else {
                        value_after(&tail[len..])
                    };
                    let place = format!("{}:{}", path.display(), i + 1);
                    found.push((place, name.to_owned(), value));
                }
            }
        }
        found
    }

    /// Loads the configuration with `name` set to `value` alone, as `hone` would.
    #[allow(clippy::result_large_err)]
    fn load_with(name: &str, value: &str) -> Result<Config, String> {
        let mut result = Err(String::new());
        figment::Jail::expect_with(|jail| {
            jail.set_env(name, value);
            result = Config::load().map_err(|e| e.to_string());
            Ok(())
        });
        result
    }

    #[test]
    fn the_clients_variables_are_not_server_settings() {
        load_with("HONE_API_KEY", "hone_sk_x").expect("HONE_API_KEY is ignored");
        load_with("HONE_URL", "http://127.0.0.1:8080").expect("HONE_URL is ignored");
    }

    #[test]
    fn every_hone_variable_in_docker_files_is_a_config_key_with_a_valid_value() {
        // The loader refuses what it does not know (`deny_unknown_fields`).
        let made_up = load_with("HONE_NO_SUCH_SETTING", "1").expect_err("an unknown key");
        assert!(made_up.contains("no_such_setting"), "{made_up}");

        let found = docker_variables();
        let names: std::collections::BTreeSet<&str> =
            found.iter().map(|(_, name, _)| name.as_str()).collect();
        assert!(
            names.contains("HONE_DATABASE_URL") && names.contains("HONE_DEVICE"),
            "docker/ names the database and the device: {names:?}"
        );
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        let mut wrong = Vec::new();
        for (place, name, value) in &found {
            if name == CONFIG_FILE_VAR {
                continue;
            }
            // Without a literal value, the key's default (an unknown key has none, and
            // any value shows the loader refusing it).
            let key = name["HONE_".len()..].to_lowercase();
            let value = value.clone().unwrap_or_else(|| {
                defaults
                    .find_value(&key)
                    .map(|v| match (v.as_str(), v.to_bool(), v.to_i128()) {
                        (Some(s), _, _) => s.to_owned(),
                        (_, Some(b), _) => b.to_string(),
                        (_, _, Some(n)) => n.to_string(),
                        _ => "1".to_owned(),
                    })
                    .unwrap_or_else(|_| "1".to_owned())
            });
            if let Err(e) = load_with(name, &value) {
                wrong.push(format!("{place}: {name}={value}: {e}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "not configuration keys or values:\n{}",
            wrong.join("\n")
        );
    }
}
