//! The small subset of CEL the examples' device selectors use, evaluated the way the scheduler
//! would against a published device:
//!
//! ```text
//! expr  := and ( "||" and )*
//! and   := cmp ( "&&" cmp )*
//! cmp   := operand ( "==" | "!=" ) operand | "(" expr ")"
//! operand := device.attributes["<domain>"].<name> | device.driver | "string" | int | true | false
//! ```
//!
//! Anything else is an error (never a silent match).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// A device as the selector sees it: its driver and its attributes by fully qualified name
/// (`<domain>/<name>`), values as JSON scalars.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub driver: String,
    pub attributes: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Int(i64),
    Ident(String),
    Dot,
    LBrack,
    RBrack,
    LParen,
    RParen,
    Eq,
    Ne,
    And,
    Or,
}

fn lex(s: &str) -> Result<Vec<Tok>> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '.' => {
                out.push(Tok::Dot);
                i += 1
            }
            '[' => {
                out.push(Tok::LBrack);
                i += 1
            }
            ']' => {
                out.push(Tok::RBrack);
                i += 1
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '=' | '!' | '&' | '|' => {
                let two: String = b[i..(i + 2).min(b.len())].iter().collect();
                out.push(match two.as_str() {
                    "==" => Tok::Eq,
                    "!=" => Tok::Ne,
                    "&&" => Tok::And,
                    "||" => Tok::Or,
                    _ => bail!("unsupported operator at {i} in {s:?}"),
                });
                i += 2;
            }
            '"' | '\'' => {
                let mut j = i + 1;
                let mut v = String::new();
                while j < b.len() && b[j] != c {
                    v.push(b[j]);
                    j += 1;
                }
                if j >= b.len() {
                    bail!("unterminated string in {s:?}");
                }
                out.push(Tok::Str(v));
                i = j + 1;
            }
            '0'..='9' | '-' => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let t: String = b[i..j].iter().collect();
                out.push(Tok::Int(t.parse()?));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '_') {
                    j += 1;
                }
                out.push(Tok::Ident(b[i..j].iter().collect()));
                i = j;
            }
            other => bail!("unexpected {other:?} in {s:?}"),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    t: Vec<Tok>,
    i: usize,
    dev: &'a Device,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn next(&mut self) -> Result<Tok> {
        let t = self.t.get(self.i).cloned();
        self.i += 1;
        t.ok_or_else(|| anyhow::anyhow!("expression ends early"))
    }
    fn expect(&mut self, want: Tok) -> Result<()> {
        let got = self.next()?;
        if got != want {
            bail!("expected {want:?}, found {got:?}");
        }
        Ok(())
    }
    fn or(&mut self) -> Result<bool> {
        let mut v = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            let r = self.and()?;
            v = v || r;
        }
        Ok(v)
    }
    fn and(&mut self) -> Result<bool> {
        let mut v = self.cmp()?;
        while self.peek() == Some(&Tok::And) {
            self.i += 1;
            let r = self.cmp()?;
            v = v && r;
        }
        Ok(v)
    }
    fn cmp(&mut self) -> Result<bool> {
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let v = self.or()?;
            self.expect(Tok::RParen)?;
            return Ok(v);
        }
        let l = self.operand()?;
        let op = self.next()?;
        let r = self.operand()?;
        match op {
            Tok::Eq => Ok(l.is_some() && l == r),
            Tok::Ne => Ok(l.is_some() && r.is_some() && l != r),
            other => bail!("expected == or !=, found {other:?}"),
        }
    }
    /// `None` for a missing attribute (CEL would error; the scheduler treats that as no match).
    fn operand(&mut self) -> Result<Option<serde_json::Value>> {
        match self.next()? {
            Tok::Str(s) => Ok(Some(s.into())),
            Tok::Int(n) => Ok(Some(n.into())),
            Tok::Ident(id) if id == "true" || id == "false" => Ok(Some((id == "true").into())),
            Tok::Ident(id) if id == "device" => {
                self.expect(Tok::Dot)?;
                match self.next()? {
                    Tok::Ident(f) if f == "driver" => Ok(Some(self.dev.driver.clone().into())),
                    Tok::Ident(f) if f == "attributes" => {
                        self.expect(Tok::LBrack)?;
                        let Tok::Str(domain) = self.next()? else {
                            bail!("attributes[...] needs a quoted domain");
                        };
                        self.expect(Tok::RBrack)?;
                        self.expect(Tok::Dot)?;
                        let Tok::Ident(name) = self.next()? else {
                            bail!("expected an attribute name");
                        };
                        Ok(self
                            .dev
                            .attributes
                            .get(&format!("{domain}/{name}"))
                            .cloned())
                    }
                    other => bail!("unsupported device field {other:?}"),
                }
            }
            other => bail!("unsupported operand {other:?}"),
        }
    }
}

/// Evaluates `expr` against `dev`.
pub fn matches(expr: &str, dev: &Device) -> Result<bool> {
    let mut p = Parser {
        t: lex(expr)?,
        i: 0,
        dev,
    };
    let v = p.or()?;
    if p.i != p.t.len() {
        bail!("trailing input in {expr:?}");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        let mut d = Device {
            driver: "cpu.drakit.dev".into(),
            ..Default::default()
        };
        d.attributes
            .insert("cpu.drakit.dev/coreType".into(), "P-core".into());
        d.attributes
            .insert("cpu.drakit.dev/package".into(), 0.into());
        d
    }

    #[test]
    fn the_example_selectors() {
        let d = dev();
        assert!(
            matches(
                r#"device.attributes["cpu.drakit.dev"].coreType == "P-core""#,
                &d
            )
            .unwrap()
        );
        assert!(
            !matches(
                r#"device.attributes["cpu.drakit.dev"].coreType == "E-core""#,
                &d
            )
            .unwrap()
        );
        assert!(
            matches(
                r#"device.attributes["cpu.drakit.dev"].package == 0 && device.driver == "cpu.drakit.dev""#,
                &d
            )
            .unwrap()
        );
        assert!(
            matches(
                r#"device.attributes["cpu.drakit.dev"].coreType == "x" || (device.attributes["cpu.drakit.dev"].package != 1)"#,
                &d
            )
            .unwrap()
        );
    }

    #[test]
    fn missing_attributes_never_match_and_unknown_syntax_is_an_error() {
        let d = dev();
        assert!(
            !matches(
                r#"device.attributes["net.drakit.dev"].kind == "virtual""#,
                &d
            )
            .unwrap()
        );
        assert!(
            !matches(
                r#"device.attributes["net.drakit.dev"].kind != "virtual""#,
                &d
            )
            .unwrap()
        );
        for bad in [
            "device.capacity[\"x\"].y > 1",
            "device.attributes[\"a\"].b.startsWith(\"x\")",
            "\"unterminated",
            "device.attributes[\"a\"].b ==",
            "",
        ] {
            assert!(matches(bad, &d).is_err(), "{bad}");
        }
    }
}
