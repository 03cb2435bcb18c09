//! The slug format: deterministic tar+gzip packing, `.slugignore`, Procfile and release
//! process types. Pure byte handling: no network, no Docker, no storage.
//!
//! A slug is a gzip'd tar whose entries are `./`, `./Procfile`, `./dir/`, … with owner
//! 0:0, empty user/group names and a fixed mtime ([`SLUG_MTIME`]), so packing the same
//! tree twice gives byte-identical output and the same SHA-256.

mod gzip;
mod ignore;
mod pack;
mod procfile;
pub mod tar_writer;
mod unpack;

#[cfg(test)]
mod tests;

pub use ignore::SlugIgnore;
pub use pack::{pack, PackOptions, PackedSlug, SlugError, MAX_CAPTURED_FILE_BYTES, SLUG_MTIME};
pub use procfile::{
    parse_procfile, parse_release_process_types, validate_process_type, BadTypeName, ProcessTypes,
    ProcfileError, ProcfileErrorKind, ReleaseError, ReleaseErrorKind, MAX_PROCESS_TYPE_LEN,
};
pub use unpack::{
    unpack_slug, unpack_tar, SlugLayout, UnpackError, UnpackOptions, UnpackSummary,
    DEFAULT_APP_PATH, MAX_EXTENSION_HEADER_BYTES, MAX_NAME_BYTES,
};
