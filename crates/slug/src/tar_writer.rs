//! The one deterministic tar writer. Slugs, build caches and build inputs all go through
//! it, so they share one set of rules: GNU headers, a fixed owner and mtime, names written
//! exactly as given (the `tar` crate's builder strips the `./` that slug entries carry),
//! GNU long-name entries for names over 100 bytes, and a short input always an error,
//! never a short archive.

use std::io::{self, Read, Write};

use tar::{EntryType, Header};

const BLOCK: usize = 512;
/// Name and link-name fields of a tar header; longer values need a GNU long-name entry.
const NAME_FIELD_BYTES: usize = 100;
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// Why copying an entry's data failed: the input (short or unreadable) or the output.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the input failed; a short input is [`io::ErrorKind::UnexpectedEof`].
    Input(io::Error),
    Output(io::Error),
}

pub struct TarWriter<W: Write> {
    out: W,
    owner: u64,
    mtime: u64,
    buffer: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    /// Every entry gets `owner` as uid and gid (names left empty) and `mtime`.
    pub fn new(out: W, owner: u64, mtime: u64) -> TarWriter<W> {
        TarWriter {
            out,
            owner,
            mtime,
            buffer: Vec::new(),
        }
    }

    /// The owner of the entries written from now on.
    pub fn set_owner(&mut self, owner: u64) {
        self.owner = owner;
    }

    /// The output, e.g. to count what was written so far.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Writes a header (after long-name entries when `name` or `link` need them). The
    /// entry's `size` bytes of data must follow through [`TarWriter::data`] or
    /// [`TarWriter::copy_data`].
    pub fn header(
        &mut self,
        name: &[u8],
        link: Option<&[u8]>,
        entry_type: EntryType,
        mode: u32,
        size: u64,
    ) -> io::Result<()> {
        // Names come from pushed trees and caches: whatever reads the archive back must
        // never be led outside its target.
        if name.starts_with(b"/") || name.split(|&b| b == b'/').any(|part| part == b"..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsafe entry name {:?}", String::from_utf8_lossy(name)),
            ));
        }
        if let Some(link) = link.filter(|l| l.len() > NAME_FIELD_BYTES) {
            self.long_name_entry(b'K', link)?;
        }
        if name.len() > NAME_FIELD_BYTES {
            self.long_name_entry(b'L', name)?;
        }
        let mut header = self.fixed_header(entry_type, mode, size);
        copy_truncated(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            copy_truncated(&mut header.as_old_mut().linkname, link);
        }
        header.set_cksum();
        self.out.write_all(header.as_bytes())
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.header(name.as_bytes(), None, EntryType::Directory, mode, 0)
    }

    /// A regular file whose whole content is `data`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.header(
            name.as_bytes(),
            None,
            EntryType::Regular,
            mode,
            data.len() as u64,
        )?;
        self.data(data)
    }

    /// A regular file of exactly `size` bytes read from `input`.
    pub fn file_from<R: Read>(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        input: &mut R,
    ) -> io::Result<()> {
        self.header(name.as_bytes(), None, EntryType::Regular, mode, size)?;
        self.copy_data(input, size).map_err(|error| match error {
            CopyError::Input(error) | CopyError::Output(error) => error,
        })
    }

    /// A symbolic link, its target kept verbatim.
    pub fn symlink(&mut self, name: &str, target: &[u8]) -> io::Result<()> {
        self.header(name.as_bytes(), Some(target), EntryType::Symlink, 0o777, 0)
    }

    /// A hard link to an entry written before.
    pub fn hard_link(&mut self, name: &str, target: &[u8], mode: u32) -> io::Result<()> {
        self.header(name.as_bytes(), Some(target), EntryType::Link, mode, 0)
    }

    /// The whole data of an entry, padded to the block size.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pad(bytes.len() as u64)
    }

    /// Streams exactly `size` bytes of entry data from `input`, padded to the block size.
    pub fn copy_data<R: Read>(&mut self, input: &mut R, size: u64) -> Result<(), CopyError> {
        if self.buffer.is_empty() {
            self.buffer = vec![0; COPY_BUFFER_BYTES];
        }
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(self.buffer.len() as u64) as usize;
            let read = match input.read(&mut self.buffer[..want]) {
                Ok(0) => {
                    return Err(CopyError::Input(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the input ended {remaining} bytes before the entry's end"),
                    )))
                }
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(CopyError::Input(error)),
            };
            self.out
                .write_all(&self.buffer[..read])
                .map_err(CopyError::Output)?;
            remaining -= read as u64;
        }
        self.pad(size).map_err(CopyError::Output)
    }

    /// Writes the end-of-archive marker and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        Ok(self.out)
    }

    /// GNU `././@LongLink` entry carrying a name or link name that does not fit.
    fn long_name_entry(&mut self, type_flag: u8, value: &[u8]) -> io::Result<()> {
        let size = value.len() as u64 + 1; // NUL-terminated, as GNU tar writes it
        let mut header = self.fixed_header(EntryType::new(type_flag), 0o644, size);
        copy_truncated(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(value)?;
        self.out.write_all(&[0])?;
        self.pad(size)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let partial = (size % BLOCK as u64) as usize;
        if partial != 0 {
            self.out.write_all(&[0; BLOCK][..BLOCK - partial])?;
        }
        Ok(())
    }

    fn fixed_header(&self, entry_type: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_uid(self.owner);
        header.set_gid(self.owner);
        header.set_mtime(self.mtime);
        header.set_size(size);
        header
    }
}

/// Fills a fixed-size name field; GNU tar stores exactly 100 bytes without a NUL and puts
/// longer names in a long-name entry first.
fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, EntryType, u64, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
                let header = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                let kind = header.entry_type();
                (
                    name,
                    kind,
                    header.uid().unwrap(),
                    header.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn writes_what_tar_reads_back_with_fixed_owner_time_and_long_names() {
        let long = format!("./{}/file", "d".repeat(150));
        let mut tar = TarWriter::new(Vec::new(), 1000, 7);
        tar.dir("./", 0o755).unwrap();
        tar.file("./a", 0o644, b"hello").unwrap();
        tar.file_from(&long, 0o600, 3, &mut &b"xyz"[..]).unwrap();
        tar.symlink("./link", b"a").unwrap();
        let archive = tar.finish().unwrap();
        let read = entries(&archive);
        let names: Vec<&str> = read.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["./", "./a", long.as_str(), "./link"]);
        assert!(read.iter().all(|e| e.2 == 1000 && e.3 == 7));
        assert_eq!(read[1].4, b"hello");
        assert_eq!(read[2].4, b"xyz");
        assert_eq!(read[3].1, EntryType::Symlink);
    }

    #[test]
    fn names_that_leave_the_target_are_refused() {
        let mut tar = TarWriter::new(Vec::new(), 0, 0);
        for name in ["/etc/passwd", "../x", "a/../../x", "a/.."] {
            let error = tar.file(name, 0o644, b"").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name}");
        }
        tar.symlink("./ok", b"../../allowed-as-a-link-target")
            .unwrap();
    }

    #[test]
    fn a_short_input_is_an_error_not_a_short_entry() {
        let mut tar = TarWriter::new(Vec::new(), 0, 0);
        let error = tar
            .file_from("./a", 0o644, 10, &mut &b"abc"[..])
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
