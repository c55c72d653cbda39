//! Linux cpu/node list strings (`0-3,8,10-11`): parsing, union and formatting.

use std::collections::BTreeSet;

/// The highest CPU or node number accepted (Linux's NR_CPUS is at most 8192).
pub const MAX_ID: u32 = 8191;

/// Parses a list such as `0-3,8`; whitespace around items is ignored, an empty string is the
/// empty set.
pub fn parse(list: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    for item in list.trim().split(',') {
        let item = item.trim();
        if item.is_empty() {
            if list.trim().is_empty() {
                continue;
            }
            return Err(format!("empty item in {list:?}"));
        }
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (number(a, list)?, number(b, list)?),
            None => {
                let n = number(item, list)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("range {item:?} in {list:?} runs backwards"));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

fn number(s: &str, list: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} in {list:?} is not a number"))?;
    if n > MAX_ID {
        return Err(format!("{n} in {list:?} is above {MAX_ID}"));
    }
    Ok(n)
}

/// Formats a set in the kernel's canonical form (ascending, ranges collapsed).
pub fn format(set: &BTreeSet<u32>) -> String {
    let mut out = String::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}

/// Canonical form of a list string (`3,1,2` -> `1-3`).
pub fn canonical(list: &str) -> Result<String, String> {
    parse(list).map(|s| format(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(canonical("0-3,8,10-11").unwrap(), "0-3,8,10-11");
        assert_eq!(canonical("3,1,2, 7").unwrap(), "1-3,7");
        assert_eq!(canonical("").unwrap(), "");
        assert_eq!(canonical("5").unwrap(), "5");
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in ["a", "1-", "3-1", "1,,2", "9000", "0-99999", "-1", "1-2-3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
