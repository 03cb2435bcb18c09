//! An S3 client of its own, to check what the builder stored.

use std::path::{Path, PathBuf};

use super::s3_endpoint;

/// An S3 client for checking what the builder stored, independent of the builder's code.
pub struct S3 {
    pub runtime: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3 {
    pub fn connect() -> S3 {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let credentials = aws_sdk_s3::config::Credentials::new(
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
            None,
            None,
            "tests",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(s3_endpoint())
            .force_path_style(true)
            .credentials_provider(credentials)
            .http_client(http)
            .build();
        S3 {
            runtime,
            client: aws_sdk_s3::Client::from_conf(config),
        }
    }

    /// Keys of multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            listed
                .uploads()
                .iter()
                .filter_map(|u| u.key().map(str::to_owned))
                .collect()
        })
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let listed = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let mut keys: Vec<String> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            keys.sort();
            keys
        })
    }

    /// Downloads `key` to a file in `dir`.
    pub fn download(&self, bucket: &str, key: &str, dir: &Path) -> PathBuf {
        let path = dir.join(key.replace(['/', ':'], "_"));
        let data = self
            .get(bucket, key)
            .unwrap_or_else(|| panic!("no {key} in {bucket}"));
        std::fs::write(&path, data).unwrap();
        path
    }

    /// Deletes every object of `bucket`, then the bucket (tests clean up what they made).
    pub fn remove_bucket(&self, bucket: &str) {
        for key in self.keys(bucket) {
            self.runtime
                .block_on(self.client.delete_object().bucket(bucket).key(&key).send())
                .unwrap();
        }
        self.runtime
            .block_on(self.client.delete_bucket().bucket(bucket).send())
            .unwrap();
    }

    pub fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        self.runtime
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(data.into())
                    .send(),
            )
            .unwrap();
    }

    /// The object's bytes; `None` when absent.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            let object = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .ok()?;
            Some(object.body.collect().await.unwrap().to_vec())
        })
    }
}
