//! tracefs: where it is, mounting it when it is missing, and parsing the
//! `format` file of a tracepoint so the eBPF side never hard-codes a field
//! offset (layouts change between kernel versions).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where tracefs lives on kernels from 4.1 on, and the older debugfs path.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u16,
    pub size: u8,
    pub signed: bool,
}

/// The parsed `format` file of one tracepoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFormat {
    pub fields: Vec<Field>,
    /// Value names from the print format's `__print_symbolic(REC->field,
    /// {0, "name"}, ...)`, per field: the kernel's own names for status and
    /// reason codes, which change between versions.
    pub symbols: Vec<(String, Vec<(i64, String)>)>,
}

impl EventFormat {
    /// Parses the text of a tracefs `format` file.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let (mut offset, mut size, mut signed) = (None, None, None);
            for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = Some(v.parse::<u16>().map_err(|e| format!("offset {v:?}: {e}"))?);
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = Some(v.parse::<u16>().map_err(|e| format!("size {v:?}: {e}"))?);
                } else if let Some(v) = part.strip_prefix("signed:") {
                    signed = Some(v == "1");
                } else if decl.is_none() {
                    decl = Some(part);
                }
            }
            let decl = decl.ok_or_else(|| format!("field without a declaration: {line:?}"))?;
            let name = field_name(decl).ok_or_else(|| format!("no field name in {decl:?}"))?;
            let (Some(offset), Some(size)) = (offset, size) else {
                return Err(format!("field {name} lacks offset or size"));
            };
            fields.push(Field {
                name: name.to_owned(),
                offset,
                // Arrays and strings can be larger than a byte counts; they
                // are never fetched as scalars, so saturate.
                size: u8::try_from(size).unwrap_or(u8::MAX),
                signed: signed.unwrap_or(false),
            });
        }
        if fields.is_empty() {
            return Err("no field lines".into());
        }
        let symbols = text
            .lines()
            .find_map(|l| l.strip_prefix("print fmt:"))
            .map(parse_symbolic)
            .unwrap_or_default();
        Ok(Self { fields, symbols })
    }

    /// The kernel's name for `value` of `field`, if the print format has one.
    pub fn symbol(&self, field: &str, value: i64) -> Option<&str> {
        let (_, table) = self.symbols.iter().find(|(f, _)| f == field)?;
        table
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, name)| name.as_str())
    }

    /// The field called `name`, if the kernel's record has it.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Extracts every `__print_symbolic(REC->field, {v, "name"}, ...)` table.
fn parse_symbolic(fmt: &str) -> Vec<(String, Vec<(i64, String)>)> {
    let mut out = Vec::new();
    for chunk in fmt.split("__print_symbolic(REC->").skip(1) {
        let Some((field, rest)) = chunk.split_once(',') else {
            continue;
        };
        let mut table = Vec::new();
        // Entries look like `{5, "exceed_none_pte"}`; stop at the closing paren.
        for entry in rest.split('{').skip(1) {
            let Some((body, after)) = entry.split_once('}') else {
                break;
            };
            let Some((value, name)) = body.split_once(',') else {
                break;
            };
            let Ok(value) = value.trim().parse::<i64>() else {
                break;
            };
            table.push((value, name.trim().trim_matches('"').to_owned()));
            if after.trim_start().starts_with(')') {
                break;
            }
        }
        if !table.is_empty() {
            out.push((field.trim().to_owned(), table));
        }
    }
    out
}

/// The identifier of a C declaration such as `unsigned long address` or
/// `char comm[16]` or `__data_loc char[] name`.
fn field_name(decl: &str) -> Option<&str> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?;
    (!name.is_empty()).then_some(name)
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Uses the tracefs at `root` (for tests and captured trees).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Finds the mounted tracefs, mounting it on /sys/kernel/tracing when no
    /// candidate has an `events` directory (needs root). Returns whether it
    /// had to mount it, so the caller can say so.
    pub fn find_or_mount() -> Result<(Self, bool)> {
        if let Some(root) = CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
        {
            return Ok((Self::at(root), false));
        }
        mount_tracefs(Path::new(CANDIDATES[0])).map_err(Error::Tracefs)?;
        Ok((Self::at(CANDIDATES[0]), true))
    }

    /// Root directory of this tracefs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the running kernel has tracepoint `category/name`.
    pub fn has_event(&self, category: &str, name: &str) -> bool {
        self.format_path(category, name).is_file()
    }

    /// Whether the running kernel has any tracepoint of `category`.
    pub fn has_category(&self, category: &str) -> bool {
        self.root.join("events").join(category).is_dir()
    }

    fn format_path(&self, category: &str, name: &str) -> PathBuf {
        self.root
            .join("events")
            .join(category)
            .join(name)
            .join("format")
    }

    /// Reads and parses the format of tracepoint `category/name`.
    pub fn format(&self, category: &str, name: &str) -> Result<EventFormat> {
        let path = self.format_path(category, name);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        EventFormat::parse(&text).map_err(|reason| Error::Format { path, reason })
    }
}

fn mount_tracefs(target: &Path) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (src, fstype) = (c("tracefs"), c("tracefs"));
    // SAFETY: all pointers are valid NUL-terminated strings; data is NULL.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test_data/tracefs")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn parses_page_fault_user_format_captured_on_6_18() {
        let f = EventFormat::parse(&fixture("page_fault_user.format")).unwrap();
        let addr = f.field("address").unwrap();
        assert_eq!((addr.offset, addr.size, addr.signed), (8, 8, false));
        let ec = f.field("error_code").unwrap();
        assert_eq!((ec.offset, ec.size), (24, 8));
        assert!(f.field("common_pid").unwrap().signed);
    }

    #[test]
    fn parses_shrink_inactive_signed_int_fields() {
        let f = EventFormat::parse(&fixture("mm_vmscan_lru_shrink_inactive.format")).unwrap();
        let prio = f.field("priority").unwrap();
        assert_eq!((prio.offset, prio.size, prio.signed), (88, 4, true));
        assert_eq!(f.field("nr_reclaimed").unwrap().offset, 24);
    }

    #[test]
    fn symbolic_status_names_come_from_the_print_format() {
        let f = EventFormat::parse(&fixture("mm_khugepaged_scan_pmd.format")).unwrap();
        assert_eq!(f.symbol("status", 5), Some("exceed_none_pte"));
        assert_eq!(f.symbol("status", 1), Some("succeeded"));
        assert_eq!(f.symbol("status", 999), None);
        assert_eq!(f.symbol("unmapped", 0), None);
        let m = EventFormat::parse(&fixture("mm_migrate_pages.format")).unwrap();
        assert_eq!(m.symbol("reason", 5), Some("numa_misplaced"));
        assert_eq!(m.symbol("mode", 2), Some("MIGRATE_SYNC"));
    }

    #[test]
    fn array_and_data_loc_names_are_stripped() {
        let text = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                    \tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;\n";
        let f = EventFormat::parse(text).unwrap();
        assert_eq!(f.fields[0].name, "comm");
        assert_eq!(f.fields[1].name, "name");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(EventFormat::parse("").unwrap_err().contains("no field"));
        let err = EventFormat::parse("field:int x;\toffset:zz;\tsize:4;").unwrap_err();
        assert!(err.contains("offset"), "{err}");
        let err = EventFormat::parse("field:int x;\tsize:4;").unwrap_err();
        assert!(err.contains("lacks offset"), "{err}");
    }
}
