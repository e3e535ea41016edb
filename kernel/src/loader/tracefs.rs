//! tracefs: where it is mounted, and the field layout of a tracepoint's record (read from its
//! `format` file at run time: offsets differ between kernels, so they are never hard-coded).

use std::path::{Path, PathBuf};

/// A tracefs problem, worded as its fix.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}): \
         run `mount -t tracefs tracefs /sys/kernel/tracing`, or mount the host's into the container"
    )]
    NotMounted(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field} in its format file")]
    MissingField { tracepoint: String, field: String },
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount, mounting it at `/sys/kernel/tracing` if nothing is mounted.
pub fn root() -> Result<PathBuf, TracefsError> {
    if let Some(found) = CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount(2) fails cleanly without privileges.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(PathBuf::from(CANDIDATES[0]))
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The record layout of one tracepoint.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub tracepoint: String,
    pub fields: Vec<Field>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text =
            std::fs::read_to_string(&path).map_err(|source| TracefsError::Read { path, source })?;
        Ok(Format::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses lines such as `\tfield:unsigned long pfn;\toffset:8;\tsize:8;\tsigned:0;`.
    #[must_use]
    pub fn parse(tracepoint: &str, text: &str) -> Format {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut name = None;
                let mut offset = None;
                let mut size = None;
                for part in line.trim().split(';') {
                    let part = part.trim();
                    if let Some(decl) = part.strip_prefix("field:") {
                        // The name is the last word, without any array suffix.
                        let last = decl.split_whitespace().last()?;
                        name = Some(last.split('[').next().unwrap_or(last).to_string());
                    } else if let Some(v) = part.strip_prefix("offset:") {
                        offset = v.parse().ok();
                    } else if let Some(v) = part.strip_prefix("size:") {
                        size = v.parse().ok();
                    }
                }
                Some(Field {
                    name: name?,
                    offset: offset?,
                    size: size?,
                })
            })
            .collect();
        Format {
            tracepoint: tracepoint.to_string(),
            fields,
        }
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Result<&Field, TracefsError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_format_file() {
        let format = Format::parse(
            "kmem:mm_page_alloc",
            include_str!("../../fixtures/mm_page_alloc.format"),
        );
        assert_eq!(
            format.field("pfn").unwrap(),
            &Field {
                name: "pfn".into(),
                offset: 8,
                size: 8
            }
        );
        assert_eq!(format.field("order").unwrap().offset, 16);
        assert_eq!(format.field("gfp_flags").unwrap().offset, 24);
        assert_eq!(format.field("common_pid").unwrap().offset, 4);
        let err = format.field("nope").unwrap_err();
        assert!(
            err.to_string()
                .contains("kmem:mm_page_alloc has no field nope"),
            "{err}"
        );
    }
}
