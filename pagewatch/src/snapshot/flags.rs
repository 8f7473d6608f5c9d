//! The `--flags` filter expression (`thp,~compound_tail`) over kpageflags
//! words, and (re-exported) the pagemap and kpageflags bit layouts.

pub use crate::kernel::pageflags::*;

use super::error::{Result, SnapshotError};

/// A parsed `--flags` expression: every listed flag set, every `~flag` clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagExpr {
    /// Bits that must be set.
    pub set: u64,
    /// Bits that must be clear.
    pub clear: u64,
}

impl FlagExpr {
    /// Parse `thp,~compound_tail` (names are case-insensitive; `bitN` works
    /// for any bit; `k:` prefixes are accepted).
    pub fn parse(expr: &str) -> Result<Self> {
        let mut out = FlagExpr::default();
        for term in expr.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (neg, name) = match term.strip_prefix('~').or(term.strip_prefix('!')) {
                Some(rest) => (true, rest),
                None => (false, term),
            };
            let name = name.to_ascii_lowercase();
            let name = name.strip_prefix("k:").unwrap_or(&name);
            let bit = KPF_NAMES
                .iter()
                .find(|(_, n)| *n == name || (name == "balloon" && *n == "offline"))
                .map(|(b, _)| *b)
                .or_else(|| name.strip_prefix("bit").and_then(|n| n.parse().ok()))
                .filter(|b| *b < 64)
                .ok_or_else(|| SnapshotError::UnknownFlag(term.to_string()))?;
            if neg {
                out.clear |= 1 << bit;
            } else {
                out.set |= 1 << bit;
            }
        }
        Ok(out)
    }

    /// Whether a kpageflags word matches.
    pub fn matches(self, flags: u64) -> bool {
        flags & self.set == self.set && flags & self.clear == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_expression_matches_set_and_clear_bits() {
        let e = FlagExpr::parse("thp,~compound_tail").unwrap();
        let head = (1 << kpf::THP) | (1 << kpf::COMPOUND_HEAD);
        let tail = (1 << kpf::THP) | (1 << kpf::COMPOUND_TAIL);
        assert!(e.matches(head));
        assert!(!e.matches(tail));
        assert!(
            FlagExpr::parse("balloon")
                .unwrap()
                .matches(1 << kpf::OFFLINE)
        );
        assert!(matches!(
            FlagExpr::parse("nosuch"),
            Err(SnapshotError::UnknownFlag(_))
        ));
    }
}
