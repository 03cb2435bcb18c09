//! Object store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    validate_key, Body, ObjectReader, ObjectStore, StorageError, Version, MAX_RECORD_BYTES,
};

/// Size of each multipart part, and the threshold below which a single PutObject is used.
/// S3 wants parts of at least 5 MiB (except the last); at most [`PARTS_IN_FLIGHT`] + 1 parts
/// are buffered per upload.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's limit on parts per upload; with [`PART_SIZE`] that caps an object at 80 GiB.
pub const MAX_PARTS: usize = 10_000;
/// Part uploads running at once (plus one part being read): overlaps the producer, the
/// network and the server's per-part work while keeping memory at a few parts per upload.
/// A third in flight gained ~10% upload speed and cost ~10 MB of peak RSS on a 1 GB push.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Part buffers all uploads of one store hold at once: one upload still gets all it can
/// use ([`PARTS_IN_FLIGHT`] sending plus one being read), while two at once (a push's
/// source beside its slug) or many small ones share them, so memory stays flat however
/// many uploads run.
pub const PART_BUFFERS: usize = PARTS_IN_FLIGHT + 1;

const DEFAULT_REGION: &str = "us-east-1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request (an 8 MiB part at most; a streamed download only until its headers) that
/// takes longer is a hung server: the attempt is dropped and retried, so a push fails with
/// a message instead of hanging.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Health checks must answer quickly and say "down" rather than hang or retry.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach the bucket. The config module fills it from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, ...).
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible service; `None` means AWS S3 for `region`.
    pub endpoint: Option<String>,
    /// Empty means `us-east-1`.
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most non-AWS services need.
    pub path_style: bool,
}

/// Secrets stay out of logs even when the settings are debug-printed.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("path_style", &self.path_style)
            .finish()
    }
}

#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    region: String,
    description: String,
    part_buffers: Arc<Semaphore>,
}

/// A part read from a body, holding one of the store's part buffers until it is sent.
struct Part {
    data: Bytes,
    _buffer: OwnedSemaphorePermit,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("backend", &self.description)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the client (checksums WhenRequired, path style when set) and creates the bucket
    /// when it does not exist (BucketAlreadyOwnedByYou is fine).
    pub async fn connect(settings: S3Settings) -> Result<Self, StorageError> {
        let store = Self::new(settings)?;
        store.ensure_bucket().await?;
        Ok(store)
    }

    /// Builds the client without any network traffic.
    fn new(settings: S3Settings) -> Result<Self, StorageError> {
        let S3Settings {
            bucket,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            path_style,
        } = settings;
        let invalid = |reason: String| StorageError::InvalidSettings { reason };
        if bucket.is_empty() {
            return Err(invalid("the S3 bucket name is empty".to_owned()));
        }
        if access_key_id.is_empty() || secret_access_key.is_empty() {
            return Err(invalid(
                "S3 credentials are missing (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .to_owned(),
            ));
        }
        let endpoint = endpoint
            .map(|endpoint| endpoint.trim().trim_end_matches('/').to_owned())
            .filter(|endpoint| !endpoint.is_empty());
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(format!(
                    "the S3 endpoint {endpoint:?} must start with http:// or https://"
                )));
            }
        }
        let region = if region.trim().is_empty() {
            DEFAULT_REGION.to_owned()
        } else {
            region.trim().to_owned()
        };

        let credentials = Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.filter(|token| !token.is_empty()),
            None,
            "deis-builder-settings",
        );
        // Built by hand because the SDK's default client feature pulls in aws-lc.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .credentials_provider(credentials)
            .http_client(http_client)
            .force_path_style(path_style)
            // The default CRC32 trailers (aws-chunked bodies) break MinIO, R2 and others.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        let description = match &endpoint {
            Some(endpoint) => format!("s3://{bucket} at {endpoint}"),
            None => format!("s3://{bucket} in AWS region {region}"),
        };
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket,
            region,
            description,
            part_buffers: Arc::new(Semaphore::new(PART_BUFFERS)),
        })
    }

    async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {}
            Err(error) => return Err(self.bucket_error("connect to", &error)),
        }
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the one region that rejects an explicit location constraint.
        if self.region != DEFAULT_REGION {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(backend = %self.description, "created bucket");
                Ok(())
            }
            // Someone (another replica) created it between our HEAD and CREATE.
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(error) => Err(self.bucket_error("create bucket", &error)),
        }
    }

    fn bucket_error<E>(&self, operation: &'static str, error: &SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, detail) = explain_sdk_error(error);
        StorageError::S3 {
            operation,
            target: self.description.clone(),
            code,
            detail,
        }
    }

    fn key_error<E>(&self, operation: &'static str, key: &str, error: &SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, detail) = explain_sdk_error(error);
        StorageError::S3 {
            operation,
            target: format!("{key:?} in {}", self.description),
            code,
            detail,
        }
    }

    fn body_error(&self, key: &str, cause: io::Error) -> StorageError {
        StorageError::BodyRead {
            backend: self.description.clone(),
            key: key.to_owned(),
            cause,
        }
    }

    async fn put_single(&self, key: &str, part: Part) -> Result<u64, StorageError> {
        let data = part.data.clone();
        let length = data.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|error| self.key_error("put", key, &error))?;
        tracing::debug!(key, bytes = length, "stored object with PutObject");
        drop(part);
        Ok(length)
    }

    /// GetObject; `None` when the key is absent.
    async fn get_object(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StorageError> {
        validate_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(output)),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(error) => Err(self.key_error(operation, key, &error)),
        }
    }

    /// A PutObject of a record under the condition `expected` (`None`: the key must be
    /// free). A refused condition is [`StorageError::Conflict`].
    async fn put_record(
        &self,
        key: &str,
        data: &[u8],
        expected: Option<&Version>,
    ) -> Result<Version, StorageError> {
        validate_key(key)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data.to_vec()));
        let (operation, request) = match expected {
            None => ("create", request.if_none_match("*")),
            Some(version) => ("replace", request.if_match(version.as_str())),
        };
        match request.send().await {
            Ok(output) => match output.e_tag() {
                Some(etag) => Ok(Version(etag.to_owned())),
                None => Err(StorageError::S3 {
                    operation,
                    target: format!("{key:?} in {}", self.description),
                    code: None,
                    detail: "the answer carries no ETag".to_owned(),
                }),
            },
            // 412: the condition failed; 409: a concurrent conditional write won; 404: the
            // record to replace is gone.
            Err(SdkError::ServiceError(context))
                if matches!(context.raw().status().as_u16(), 409 | 412)
                    || (expected.is_some() && context.raw().status().as_u16() == 404) =>
            {
                Err(StorageError::Conflict {
                    operation,
                    backend: self.description.clone(),
                    key: key.to_owned(),
                })
            }
            Err(error) => Err(self.key_error(operation, key, &error)),
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        first_part: Part,
        next_byte: u8,
        body: Body<'_>,
    ) -> Result<u64, StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| self.key_error("put", key, &error))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StorageError::S3 {
                operation: "put",
                target: format!("{key:?} in {}", self.description),
                code: None,
                detail: "CreateMultipartUpload answered without an upload id".to_owned(),
            });
        };
        let mut abort_guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        match self
            .upload_parts(key, &upload_id, first_part, next_byte, body)
            .await
        {
            Ok(written) => {
                abort_guard.disarm();
                tracing::debug!(key, bytes = written, "stored object with multipart upload");
                Ok(written)
            }
            Err(error) => {
                abort_guard.abort().await;
                Err(error)
            }
        }
    }

    /// Uploads the parts, up to [`PARTS_IN_FLIGHT`] at once while the next one is read from
    /// `body` (so a slow producer and a slow server overlap), and completes the upload. The
    /// caller aborts it on error; part uploads still running then are cancelled.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first_part: Part,
        next_byte: u8,
        body: Body<'_>,
    ) -> Result<u64, StorageError> {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut completed_parts = Vec::new();
        let mut written: u64 = 0;
        let mut part = first_part;
        let mut carried = Some(next_byte);
        for part_number in 1..=MAX_PARTS {
            let Part {
                data,
                _buffer: buffer,
            } = part;
            written += data.len() as u64;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(part_number as i32)
                .body(ByteStream::from(data));
            // The buffer is given back once the part is sent.
            in_flight.spawn(async move {
                let sent = request.send().await;
                drop(buffer);
                (part_number, sent)
            });
            let Some(byte) = carried else {
                while let Some(finished) = in_flight.join_next().await {
                    completed_parts.push(self.finished_part(key, finished)?);
                }
                completed_parts.sort_by_key(|part| part.part_number());
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(completed_parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|error| self.key_error("put", key, &error))?;
                return Ok(written);
            };
            // Bounded memory: PARTS_IN_FLIGHT parts uploading plus the one being read.
            while in_flight.len() >= PARTS_IN_FLIGHT {
                if let Some(finished) = in_flight.join_next().await {
                    completed_parts.push(self.finished_part(key, finished)?);
                }
            }
            (part, carried) = read_part(&self.part_buffers, body, Some(byte))
                .await
                .map_err(|cause| self.body_error(key, cause))?;
        }
        Err(StorageError::TooLarge {
            backend: self.description.clone(),
            key: key.to_owned(),
            limit_bytes: (PART_SIZE as u64) * (MAX_PARTS as u64),
        })
    }

    /// The outcome of one part upload task, as the entry CompleteMultipartUpload needs.
    fn finished_part(
        &self,
        key: &str,
        finished: Result<(usize, UploadPartResult), tokio::task::JoinError>,
    ) -> Result<CompletedPart, StorageError> {
        let (part_number, result) = finished.map_err(|error| StorageError::S3 {
            operation: "put",
            target: format!("{key:?} in {}", self.description),
            code: None,
            detail: format!("a part upload task failed: {error}"),
        })?;
        let uploaded = result.map_err(|error| self.key_error("put", key, &error))?;
        Ok(CompletedPart::builder()
            .set_e_tag(uploaded.e_tag().map(str::to_owned))
            .part_number(part_number as i32)
            .build())
    }
}

type UploadPartResult = Result<
    aws_sdk_s3::operation::upload_part::UploadPartOutput,
    SdkError<aws_sdk_s3::operation::upload_part::UploadPartError>,
>;

/// Reads up to one part. Returns the part and, when the body goes on, the first byte of the
/// next part: peeking one byte is how a body of exactly one full part is recognised as a
/// single-PutObject body without buffering a second part.
async fn read_part(
    buffers: &Arc<Semaphore>,
    body: Body<'_>,
    carried: Option<u8>,
) -> io::Result<(Part, Option<u8>)> {
    let permit = buffers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("the store's part buffers are closed"))?;
    let part = |data: Vec<u8>| Part {
        data: Bytes::from(data),
        _buffer: permit,
    };
    let mut buffer = vec![0u8; PART_SIZE];
    let mut filled = 0;
    if let Some(byte) = carried {
        buffer[0] = byte;
        filled = 1;
    }
    while filled < PART_SIZE {
        let read = body.read(&mut buffer[filled..]).await?;
        if read == 0 {
            buffer.truncate(filled);
            return Ok((part(buffer), None));
        }
        filled += read;
    }
    let mut probe = [0u8; 1];
    let next_byte = match body.read(&mut probe).await? {
        0 => None,
        _ => Some(probe[0]),
    };
    Ok((part(buffer), next_byte))
}

/// Turns an SDK error into (service error code, readable detail). Service errors show the
/// code and message S3 sent; transport errors show the cause chain (connection refused, DNS,
/// TLS), which the SDK's own `Display` leaves out.
fn explain_sdk_error<E>(error: &SdkError<E>) -> (Option<String>, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let service_error = context.err();
            match (service_error.code(), service_error.message()) {
                (Some(code), Some(message)) => (
                    Some(code.to_owned()),
                    format!("{code}: {message} (HTTP {status})"),
                ),
                (Some(code), None) => (Some(code.to_owned()), format!("{code} (HTTP {status})")),
                // HEAD answers have no body, hence no code: say what the status means.
                (None, _) => (
                    None,
                    format!("{} (HTTP {status})", describe_status(status, error)),
                ),
            }
        }
        SdkError::DispatchFailure(_) => (
            None,
            format!("cannot reach the S3 endpoint: {}", error_chain(error)),
        ),
        SdkError::TimeoutError(_) => (None, "the request timed out".to_owned()),
        _ => (None, error_chain(error)),
    }
}

fn describe_status(status: u16, error: &(dyn std::error::Error + 'static)) -> String {
    match status {
        301 => "the bucket is in another region (PermanentRedirect)".to_owned(),
        400 => "the service rejected the request (BadRequest)".to_owned(),
        403 => "access denied: check the credentials and bucket policy (Forbidden)".to_owned(),
        404 => "not found".to_owned(),
        _ => error_chain(error),
    }
}

/// `error: cause: cause ...`, skipping a cause whose text its parent already shows.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Aborts a multipart upload unless disarmed, so that no upload (and its stored parts) is left
/// in progress, even when the `put` future is dropped halfway.
struct AbortOnDrop {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.upload_id = None;
    }

    async fn abort(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            abort_upload(&self.client, &self.bucket, &self.key, &upload_id).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, %upload_id, "cannot abort multipart upload: no runtime");
            return;
        };
        let client = self.client.clone();
        let bucket = std::mem::take(&mut self.bucket);
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move { abort_upload(&client, &bucket, &key, &upload_id).await });
    }
}

async fn abort_upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match result {
        Ok(_) => tracing::debug!(key, upload_id, "aborted multipart upload"),
        Err(error) => {
            let (_, detail) = explain_sdk_error(&error);
            tracing::warn!(key, upload_id, %detail, "cannot abort multipart upload");
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Body<'_>) -> Result<u64, StorageError> {
        validate_key(key)?;
        let (first_part, next_byte) = read_part(&self.part_buffers, body, None)
            .await
            .map_err(|cause| self.body_error(key, cause))?;
        match next_byte {
            None => self.put_single(key, first_part).await,
            Some(byte) => self.put_multipart(key, first_part, byte, body).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        let output = self.get_object("get", key).await?;
        Ok(output.map(|output| Box::new(output.body.into_async_read()) as ObjectReader))
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        validate_key(key)?;
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(error) => Err(self.key_error("exists", key, &error)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // S3 answers 204 for absent keys; some compatible services answer NoSuchKey.
            Err(error) if error.code() == Some("NoSuchKey") => Ok(()),
            Err(error) => Err(self.key_error("delete", key, &error)),
        }
    }

    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StorageError> {
        let Some(output) = self.get_object("read", key).await? else {
            return Ok(None);
        };
        let version = Version(output.e_tag().unwrap_or_default().to_owned());
        let mut data = Vec::new();
        output
            .body
            .into_async_read()
            .take(MAX_RECORD_BYTES as u64 + 1)
            .read_to_end(&mut data)
            .await
            .map_err(|cause| StorageError::S3 {
                operation: "read",
                target: format!("{key:?} in {}", self.description),
                code: None,
                detail: cause.to_string(),
            })?;
        if data.len() > MAX_RECORD_BYTES {
            return Err(StorageError::RecordTooLarge {
                backend: self.description.clone(),
                key: key.to_owned(),
                limit_bytes: MAX_RECORD_BYTES,
            });
        }
        Ok(Some((data, version)))
    }

    async fn create_record(&self, key: &str, data: &[u8]) -> Result<Version, StorageError> {
        self.put_record(key, data, None).await
    }

    async fn replace_record(
        &self,
        key: &str,
        data: &[u8],
        expected: &Version,
    ) -> Result<Version, StorageError> {
        self.put_record(key, data, Some(expected)).await
    }

    async fn check(&self) -> Result<(), StorageError> {
        let quick = aws_sdk_s3::Config::builder()
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CHECK_TIMEOUT)
                    .operation_timeout(CHECK_TIMEOUT)
                    .build(),
            );
        let result = self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(quick)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                Err(StorageError::S3 {
                    operation: "check",
                    target: self.description.clone(),
                    code: Some("NoSuchBucket".to_owned()),
                    detail: "the bucket does not exist (HTTP 404)".to_owned(),
                })
            }
            Err(error) => Err(self.bucket_error("check", &error)),
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{read_all, sha256_of, FailingReader};

    /// Settings for the S3 server named by `DEIS_IT_S3_ENDPOINT`, with a fresh bucket; `None`
    /// (and a note on stdout) when it is not set.
    fn it_settings() -> Option<S3Settings> {
        let Ok(endpoint) = std::env::var("DEIS_IT_S3_ENDPOINT") else {
            println!("skipped: DEIS_IT_S3_ENDPOINT not set");
            return None;
        };
        let env_or = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Some(S3Settings {
            bucket: format!("deis-it-{:016x}", rand::random::<u64>()),
            endpoint: Some(endpoint),
            region: env_or("AWS_REGION", DEFAULT_REGION),
            access_key_id: env_or("AWS_ACCESS_KEY_ID", "test"),
            secret_access_key: env_or("AWS_SECRET_ACCESS_KEY", "test"),
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
            path_style: true,
        })
    }

    async fn head_etag(store: &S3Store, key: &str) -> String {
        let head = store
            .client
            .head_object()
            .bucket(&store.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        head.e_tag().unwrap_or_default().to_owned()
    }

    async fn uploads_in_progress(store: &S3Store) -> usize {
        let listed = store
            .client
            .list_multipart_uploads()
            .bucket(&store.bucket)
            .send()
            .await
            .unwrap();
        listed.uploads().len()
    }

    /// A store on a loopback port that nobody listens on.
    fn closed_port_store() -> (S3Store, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let store = S3Store::new(S3Settings {
            bucket: "deis-it-closed".to_owned(),
            endpoint: Some(endpoint.clone()),
            region: String::new(),
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "very-secret-value".to_owned(),
            session_token: Some("session-secret".to_owned()),
            path_style: true,
        })
        .unwrap();
        (store, endpoint)
    }

    #[tokio::test]
    async fn records_are_conditional() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings).await.unwrap();
        crate::test_support::records_are_conditional(&store).await;
        store
            .client
            .delete_bucket()
            .bucket(&store.bucket)
            .send()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn small_put_get_roundtrip() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings.clone()).await.unwrap();
        // Connecting again to the existing bucket is fine.
        S3Store::connect(settings).await.unwrap();

        let key = "home/app:git-1234abcd/push/Procfile";
        assert!(!store.exists(key).await.unwrap());
        assert!(store.get(key).await.unwrap().is_none());
        let procfile = b"web: bin/start\n";
        let written = store.put(key, &mut &procfile[..]).await.unwrap();
        assert_eq!(written, procfile.len() as u64);
        assert!(store.exists(key).await.unwrap());
        assert_eq!(
            read_all(store.get(key).await.unwrap().unwrap()).await,
            procfile
        );

        store.put("empty", &mut &b""[..]).await.unwrap();
        assert!(read_all(store.get("empty").await.unwrap().unwrap())
            .await
            .is_empty());
        assert!(matches!(
            store.put("../x", &mut &b""[..]).await,
            Err(StorageError::InvalidKey { .. })
        ));
    }

    #[tokio::test]
    async fn large_put_uses_multipart_and_roundtrips() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings).await.unwrap();
        let key = "home/app:git-1234abcd/push/slug.tgz";
        let size = 20 * 1024 * 1024;
        let written = store
            .put(key, &mut FailingReader::new(size, None))
            .await
            .unwrap();
        assert_eq!(written, size);
        let reader = store.get(key).await.unwrap().unwrap();
        assert_eq!(
            sha256_of(reader).await,
            FailingReader::expected_sha256(size)
        );
        // Multipart ETags end in -<number of parts>: 8 + 8 + 4 MiB.
        assert!(head_etag(&store, key).await.ends_with("-3\""));
        assert_eq!(uploads_in_progress(&store).await, 0);

        // Exactly one full part is a single PutObject.
        let exact = PART_SIZE as u64;
        store
            .put("exact", &mut FailingReader::new(exact, None))
            .await
            .unwrap();
        assert!(!head_etag(&store, "exact").await.contains('-'));
        assert_eq!(
            sha256_of(store.get("exact").await.unwrap().unwrap()).await,
            FailingReader::expected_sha256(exact)
        );
        // One byte more is two parts.
        store
            .put("exact-plus-one", &mut FailingReader::new(exact + 1, None))
            .await
            .unwrap();
        assert!(head_etag(&store, "exact-plus-one").await.ends_with("-2\""));
        assert_eq!(
            sha256_of(store.get("exact-plus-one").await.unwrap().unwrap()).await,
            FailingReader::expected_sha256(exact + 1)
        );
    }

    #[tokio::test]
    async fn more_parts_than_in_flight_keep_their_order() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings).await.unwrap();
        let parts = PARTS_IN_FLIGHT as u64 + 3;
        let size = (parts - 1) * PART_SIZE as u64 + 12_345;
        let written = store
            .put("many", &mut FailingReader::new(size, None))
            .await
            .unwrap();
        assert_eq!(written, size);
        let reader = store.get("many").await.unwrap().unwrap();
        assert_eq!(
            sha256_of(reader).await,
            FailingReader::expected_sha256(size)
        );
        assert!(head_etag(&store, "many")
            .await
            .ends_with(&format!("-{parts}\"")));

        // A body failing while parts are uploading: no object, no upload left.
        let fail_at = (PARTS_IN_FLIGHT as u64 + 1) * PART_SIZE as u64 + 99;
        let mut body = FailingReader::new(size, Some(fail_at));
        store.put("many-failed", &mut body).await.unwrap_err();
        assert!(!store.exists("many-failed").await.unwrap());
        assert_eq!(uploads_in_progress(&store).await, 0);
    }

    #[tokio::test]
    async fn failing_body_leaves_no_object_and_no_upload() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings).await.unwrap();
        let key = "home/app:git-1234abcd/tar";

        // Fails in the third part, after two parts were uploaded.
        let mut body = FailingReader::new(20 * 1024 * 1024, Some(17 * 1024 * 1024));
        let error = store.put(key, &mut body).await.unwrap_err();
        assert!(
            matches!(error, StorageError::BodyRead { .. }),
            "unexpected error {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(key) && message.contains("s3://"),
            "{message}"
        );
        assert!(!store.exists(key).await.unwrap());
        assert_eq!(uploads_in_progress(&store).await, 0);

        // Fails within the first part: nothing is even started.
        let mut body = FailingReader::new(20 * 1024 * 1024, Some(1024 * 1024));
        store.put(key, &mut body).await.unwrap_err();
        assert!(!store.exists(key).await.unwrap());
        assert_eq!(uploads_in_progress(&store).await, 0);

        // A failed overwrite keeps the previous object.
        store.put(key, &mut &b"previous"[..]).await.unwrap();
        let mut body = FailingReader::new(20 * 1024 * 1024, Some(9 * 1024 * 1024));
        store.put(key, &mut body).await.unwrap_err();
        assert_eq!(
            read_all(store.get(key).await.unwrap().unwrap()).await,
            b"previous"
        );
        assert_eq!(uploads_in_progress(&store).await, 0);
    }

    #[tokio::test]
    async fn dropped_multipart_put_is_aborted() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings).await.unwrap();
        // One full part then a body that stalls: the put is cancelled mid-upload.
        let (mut reader, mut writer) = tokio::io::duplex(1024 * 1024);
        let feeder = tokio::spawn(async move {
            let mut data = FailingReader::new(PART_SIZE as u64 + 1, None);
            tokio::io::copy(&mut data, &mut writer).await.unwrap();
            // Keep the writer open so the body never ends.
            std::future::pending::<()>().await;
            drop(writer);
        });
        let put = store.put("stalled", &mut reader);
        tokio::time::timeout(Duration::from_secs(3), put)
            .await
            .unwrap_err();
        feeder.abort();
        // The abort runs on a spawned task; give it a moment.
        for _ in 0..50 {
            if uploads_in_progress(&store).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(uploads_in_progress(&store).await, 0);
        assert!(!store.exists("stalled").await.unwrap());
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings).await.unwrap();
        let key = "home/app/cache/cache.tgz";
        store.delete(key).await.unwrap();
        store.put(key, &mut &b"cache"[..]).await.unwrap();
        store.delete(key).await.unwrap();
        assert!(!store.exists(key).await.unwrap());
        store.delete(key).await.unwrap();
    }

    #[tokio::test]
    async fn check_succeeds_on_live_bucket() {
        let Some(settings) = it_settings() else {
            return;
        };
        let store = S3Store::connect(settings.clone()).await.unwrap();
        store.check().await.unwrap();
        assert_eq!(
            store.describe(),
            format!(
                "s3://{} at {}",
                settings.bucket,
                settings.endpoint.unwrap().trim_end_matches('/')
            )
        );
    }

    #[tokio::test]
    async fn missing_bucket_errors_name_the_code() {
        let Some(mut settings) = it_settings() else {
            return;
        };
        settings.bucket = format!("deis-it-missing-{:016x}", rand::random::<u64>());
        // Built without `connect`, so the bucket is not created.
        let store = S3Store::new(settings).unwrap();
        let message = store
            .put("home/a/tar", &mut &b"x"[..])
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains("NoSuchBucket"), "{message}");
        assert!(message.contains("\"home/a/tar\""), "{message}");
        let error = store.check().await.unwrap_err();
        println!("check on a missing bucket: {error}");
        assert_eq!(error.service_code(), Some("NoSuchBucket"));
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[tokio::test]
    async fn check_on_closed_port_errors_clearly() {
        let (store, endpoint) = closed_port_store();
        let started = std::time::Instant::now();
        let message = store.check().await.unwrap_err().to_string();
        println!("check on a closed port: {message}");
        assert!(started.elapsed() < CHECK_TIMEOUT + Duration::from_secs(1));
        assert!(message.contains(&endpoint), "{message}");
        assert!(message.contains("cannot reach"), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("very-secret-value"), "{message}");
        assert!(!message.contains("session-secret"), "{message}");
    }

    #[tokio::test]
    async fn connect_on_closed_port_errors_clearly() {
        let (store, endpoint) = closed_port_store();
        let message = store.ensure_bucket().await.unwrap_err().to_string();
        println!("connect on a closed port: {message}");
        assert!(message.contains(&endpoint), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }

    #[test]
    fn settings_are_validated_and_secrets_not_printed() {
        let base = S3Settings {
            bucket: "b".to_owned(),
            endpoint: Some("http://127.0.0.1:9000/".to_owned()),
            region: String::new(),
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "very-secret-value".to_owned(),
            session_token: Some("session-secret".to_owned()),
            path_style: true,
        };
        let printed = format!("{base:?}");
        assert!(!printed.contains("very-secret-value") && !printed.contains("session-secret"));

        let store = S3Store::new(base.clone()).unwrap();
        assert_eq!(store.describe(), "s3://b at http://127.0.0.1:9000");
        assert!(!format!("{store:?}").contains("very-secret-value"));

        let aws = S3Store::new(S3Settings {
            endpoint: None,
            region: "eu-west-1".to_owned(),
            ..base.clone()
        })
        .unwrap();
        assert_eq!(aws.describe(), "s3://b in AWS region eu-west-1");

        for bad in [
            S3Settings {
                bucket: String::new(),
                ..base.clone()
            },
            S3Settings {
                endpoint: Some("127.0.0.1:9000".to_owned()),
                ..base.clone()
            },
            S3Settings {
                secret_access_key: String::new(),
                ..base.clone()
            },
        ] {
            assert!(matches!(
                S3Store::new(bad),
                Err(StorageError::InvalidSettings { .. })
            ));
        }
    }
}
