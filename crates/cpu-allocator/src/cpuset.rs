//! A set of CPU (or NUMA node) numbers and the kernel's list format (`0-3,8,10-11`).

use std::fmt;

/// Highest CPU number (exclusive) this crate accepts; the kernel's `NR_CPUS` tops out at 8192, so
/// anything larger in a file is corruption, and refusing it keeps a bad file from allocating gigabytes.
pub const MAX_CPUS: u32 = 1 << 16;

/// Why a CPU list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("invalid CPU list {input:?}: {reason}")]
    Invalid { input: String, reason: String },
}

fn invalid(input: &str, reason: impl Into<String>) -> CpuListError {
    CpuListError::Invalid {
        input: input.chars().take(128).collect(),
        reason: reason.into(),
    }
}

/// A set of CPU numbers, stored as a bitmap.
#[derive(Clone, Default)]
pub struct CpuSet {
    words: Vec<u64>,
}

impl PartialEq for CpuSet {
    fn eq(&self, other: &Self) -> bool {
        let n = self.words.len().max(other.words.len());
        (0..n).all(|i| self.word(i) == other.word(i))
    }
}

impl Eq for CpuSet {}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the kernel list format: comma-separated numbers and inclusive ranges, surrounding
    /// whitespace (the trailing newline of a sysfs file) ignored; an empty string is the empty set.
    pub fn parse(input: &str) -> Result<Self, CpuListError> {
        let trimmed = input.trim();
        let mut set = Self::new();
        if trimmed.is_empty() {
            return Ok(set);
        }
        for part in trimmed.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(invalid(input, "empty element"));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (parse_num(input, a)?, parse_num(input, b)?),
                None => {
                    let n = parse_num(input, part)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(invalid(input, format!("descending range {part}")));
            }
            for cpu in lo..=hi {
                set.insert(cpu);
            }
        }
        Ok(set)
    }

    /// Adds a CPU; numbers at or above [`MAX_CPUS`] are ignored (parse refuses them earlier).
    pub fn insert(&mut self, cpu: u32) {
        if cpu >= MAX_CPUS {
            return;
        }
        let (w, b) = ((cpu / 64) as usize, cpu % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << b;
    }

    /// Removes a CPU; returns whether it was present.
    pub fn remove(&mut self, cpu: u32) -> bool {
        let (w, b) = ((cpu / 64) as usize, cpu % 64);
        match self.words.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                true
            }
            _ => false,
        }
    }

    pub fn contains(&self, cpu: u32) -> bool {
        let (w, b) = ((cpu / 64) as usize, cpu % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The lowest member.
    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }

    pub fn union(&self, other: &Self) -> Self {
        let n = self.words.len().max(other.words.len());
        let words = (0..n)
            .map(|i| self.word(i) | other.word(i))
            .collect::<Vec<_>>();
        Self { words }.trimmed()
    }

    pub fn intersection(&self, other: &Self) -> Self {
        let n = self.words.len().min(other.words.len());
        let words = (0..n)
            .map(|i| self.word(i) & other.word(i))
            .collect::<Vec<_>>();
        Self { words }.trimmed()
    }

    /// Members of `self` not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let words = (0..self.words.len())
            .map(|i| self.word(i) & !other.word(i))
            .collect::<Vec<_>>();
        Self { words }.trimmed()
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        (0..self.words.len()).all(|i| self.word(i) & !other.word(i) == 0)
    }

    pub fn is_disjoint(&self, other: &Self) -> bool {
        (0..self.words.len().min(other.words.len())).all(|i| self.word(i) & other.word(i) == 0)
    }

    fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }

    fn trimmed(mut self) -> Self {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        self
    }
}

fn parse_num(input: &str, s: &str) -> Result<u32, CpuListError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(input, format!("{s:?} is not a number")));
    }
    let n: u32 = s
        .parse()
        .map_err(|_| invalid(input, format!("{s:?} is out of range")))?;
    if n >= MAX_CPUS {
        return Err(invalid(input, format!("{n} is above the limit {MAX_CPUS}")));
    }
    Ok(n)
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut set = Self::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

impl Extend<u32> for CpuSet {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, iter: I) {
        for cpu in iter {
            self.insert(cpu);
        }
    }
}

/// The kernel list format, ranges collapsed: `0-3,8`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.iter().peekable();
        while let Some(lo) = iter.next() {
            let mut hi = lo;
            while iter.peek() == Some(&(hi + 1)) {
                hi += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if hi == lo {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CpuSet::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        for (input, want) in [
            ("", ""),
            ("0", "0"),
            ("0-3,8\n", "0-3,8"),
            ("8,0-3", "0-3,8"),
            ("1,2,3,5", "1-3,5"),
            ("0-1023", "0-1023"),
            (" 4 - 5 , 7", "4-5,7"),
        ] {
            let set = CpuSet::parse(input).unwrap();
            assert_eq!(set.to_string(), want, "input {input:?}");
            assert_eq!(CpuSet::parse(&set.to_string()).unwrap(), set);
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "a",
            "1-",
            "-1",
            "3-1",
            "1,,2",
            "1;2",
            "0x3",
            "99999999999",
            "70000",
        ] {
            let err = CpuSet::parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid CPU list"), "{bad}: {err}");
        }
    }

    #[test]
    fn set_operations() {
        let a = CpuSet::parse("0-7").unwrap();
        let b = CpuSet::parse("4-11").unwrap();
        assert_eq!(a.union(&b).to_string(), "0-11");
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert!(CpuSet::parse("1-2").unwrap().is_subset(&a));
        assert!(!b.is_subset(&a));
        assert!(CpuSet::parse("0-3").unwrap().is_disjoint(&b));
        assert_eq!(a.difference(&a), CpuSet::new());
        assert_eq!(a.len(), 8);
        let mut c = a.clone();
        assert!(c.remove(0));
        assert!(!c.remove(0));
        assert_eq!(c.first(), Some(1));
    }

    proptest::proptest! {
        #[test]
        fn display_parse_round_trip(cpus in proptest::collection::vec(0u32..2048, 0..200)) {
            let set: CpuSet = cpus.iter().copied().collect();
            let back = CpuSet::parse(&set.to_string()).unwrap();
            proptest::prop_assert_eq!(back.len(), set.len());
            proptest::prop_assert_eq!(back, set);
        }

        #[test]
        fn parse_never_panics(s in "[0-9,\\- a]{0,24}") {
            let _ = CpuSet::parse(&s);
        }
    }
}
