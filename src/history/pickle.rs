//! A small Python pickle writer and reader: the subset of protocol 2 that
//! a memory snapshot needs (dicts with string keys, lists, strings,
//! integers, floats, booleans and `None`). What [`write()`] produces loads
//! with Python's `pickle.load`; [`read()`] reads it back (and nothing else).

use std::collections::BTreeMap;

/// A pickled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer (any `i128`).
    Int(i128),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// A dict with string keys, in key order.
    Dict(BTreeMap<String, Value>),
}

impl Value {
    /// The value under `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key),
            _ => None,
        }
    }

    /// The items of a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(n.into())
    }
}
impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value::Int(n as i128)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}
impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::List(items)
    }
}

/// Builds a dict from `(key, value)` pairs.
pub fn dict<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Dict(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const MARK: u8 = b'(';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';
/// Items per MARK ... APPENDS/SETITEMS batch (as Python's pickler does).
const BATCH: usize = 1000;

/// The pickle (protocol 2) of `value`.
pub fn write(value: &Value) -> Vec<u8> {
    let mut out = vec![PROTO, 2];
    put(&mut out, value);
    out.push(STOP);
    out
}

fn put(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::None => out.push(NONE),
        Value::Bool(b) => out.push(if *b { NEWTRUE } else { NEWFALSE }),
        Value::Int(n) => match i32::try_from(*n) {
            Ok(small) => {
                out.push(BININT);
                out.extend_from_slice(&small.to_le_bytes());
            }
            Err(_) => {
                // Little-endian two's complement, as short as keeps the sign.
                let mut bytes = n.to_le_bytes().to_vec();
                while bytes.len() > 1 {
                    let (last, prev) = (bytes[bytes.len() - 1], bytes[bytes.len() - 2]);
                    let redundant =
                        (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
                    if !redundant {
                        break;
                    }
                    bytes.pop();
                }
                out.push(LONG1);
                out.push(bytes.len() as u8);
                out.extend_from_slice(&bytes);
            }
        },
        Value::Float(x) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Str(s) => {
            out.push(BINUNICODE);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::List(items) => {
            out.push(EMPTY_LIST);
            for chunk in items.chunks(BATCH) {
                out.push(MARK);
                chunk.iter().for_each(|v| put(out, v));
                out.push(APPENDS);
            }
        }
        Value::Dict(map) => {
            out.push(EMPTY_DICT);
            let items: Vec<_> = map.iter().collect();
            for chunk in items.chunks(BATCH) {
                out.push(MARK);
                for (k, v) in chunk {
                    put(out, &Value::Str((*k).clone()));
                    put(out, v);
                }
                out.push(SETITEMS);
            }
        }
    }
}

/// Why [`read()`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a snapshot pickle: {reason} at byte {at}")]
pub struct PickleError {
    /// The byte offset.
    pub at: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// How deep [`read()`] lets values nest (a snapshot nests about 6 deep).
/// A deeper input is refused: dropping a value nested without bound would
/// recurse past the thread's stack, which aborts the process.
pub const MAX_DEPTH: usize = 128;

/// Reads a pickle [`write()`] made (the same opcode subset). Values nested
/// deeper than [`MAX_DEPTH`] are an error.
pub fn read(bytes: &[u8]) -> Result<Value, PickleError> {
    let mut stack: Vec<Value> = Vec::new();
    // The nesting depth of each value on `stack` (a scalar is 0).
    let mut depths: Vec<usize> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut at = 0;
    let err = |at, reason| PickleError { at, reason };
    let take = |at: &mut usize, n: usize| -> Result<&[u8], PickleError> {
        let end = at.checked_add(n).filter(|&e| e <= bytes.len());
        let end = end.ok_or(PickleError {
            at: *at,
            reason: "truncated",
        })?;
        let s = &bytes[*at..end];
        *at = end;
        Ok(s)
    };
    loop {
        let op = *take(&mut at, 1)?.first().ok_or(err(at, "truncated"))?;
        match op {
            PROTO => {
                take(&mut at, 1)?;
            }
            STOP => {
                debug_assert_eq!(stack.len(), depths.len());
                return match (stack.pop(), stack.is_empty()) {
                    (Some(v), true) => Ok(v),
                    _ => Err(err(at, "stack not one value at STOP")),
                };
            }
            NONE => stack.push(Value::None),
            NEWTRUE => stack.push(Value::Bool(true)),
            NEWFALSE => stack.push(Value::Bool(false)),
            BININT => {
                let b = take(&mut at, 4)?;
                stack.push(Value::Int(
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into(),
                ));
            }
            LONG1 => {
                let n = take(&mut at, 1)?[0] as usize;
                let b = take(&mut at, n)?;
                if n > 16 {
                    return Err(err(at, "integer too long"));
                }
                let fill = if b.last().is_some_and(|x| x & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut full = [fill; 16];
                full[..n].copy_from_slice(b);
                stack.push(Value::Int(i128::from_le_bytes(full)));
            }
            BINFLOAT => {
                let b = take(&mut at, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(
                    b.try_into().unwrap_or([0; 8]),
                )));
            }
            BINUNICODE => {
                let b = take(&mut at, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let s = std::str::from_utf8(take(&mut at, n)?).map_err(|_| err(at, "bad UTF-8"))?;
                stack.push(Value::Str(s.to_owned()));
            }
            EMPTY_LIST => stack.push(Value::List(Vec::new())),
            EMPTY_DICT => stack.push(Value::Dict(BTreeMap::new())),
            MARK => marks.push(stack.len()),
            APPENDS | SETITEMS => {
                let mark = marks.pop().ok_or(err(at, "no MARK"))?;
                let items = stack.split_off(mark);
                let inner = depths.split_off(mark).into_iter().max().unwrap_or(0);
                if let Some(depth) = depths.last_mut() {
                    *depth = (*depth).max(inner + 1);
                    if *depth > MAX_DEPTH {
                        return Err(err(at, "values nested too deep"));
                    }
                }
                match (stack.last_mut(), op) {
                    (Some(Value::List(list)), APPENDS) => list.extend(items),
                    (Some(Value::Dict(map)), SETITEMS) if items.len().is_multiple_of(2) => {
                        let mut it = items.into_iter();
                        while let (Some(Value::Str(k)), Some(v)) = (it.next(), it.next()) {
                            map.insert(k, v);
                        }
                    }
                    _ => return Err(err(at, "APPENDS/SETITEMS on the wrong thing")),
                }
            }
            _ => return Err(err(at - 1, "unsupported opcode")),
        }
        // Every other opcode pushes a value that holds nothing yet.
        depths.resize(stack.len(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let big: Vec<Value> = (0..2500u64).map(Value::from).collect();
        let v = dict([
            ("none", Value::None),
            ("t", true.into()),
            ("f", false.into()),
            ("small", Value::Int(-5)),
            ("addr", Value::Int(0x7f00_0000_0000)),
            ("neg", Value::Int(-(1 << 40))),
            ("top", Value::Int(u64::MAX.into())),
            ("x", 1.5.into()),
            ("s", "héllo".into()),
            ("list", big.into()),
        ]);
        assert_eq!(read(&write(&v)).unwrap(), v);
    }

    #[test]
    fn nesting_up_to_the_limit_reads_and_deeper_is_refused() {
        let nested = |depth: usize| {
            let mut v = Value::Int(1);
            for _ in 0..depth {
                v = Value::List(vec![v]);
            }
            v
        };
        let v = nested(MAX_DEPTH);
        assert_eq!(read(&write(&v)).unwrap(), v);
        let e = read(&write(&nested(MAX_DEPTH + 1))).unwrap_err();
        assert_eq!(e.reason, "values nested too deep");
    }

    #[test]
    fn rejects_what_it_did_not_write() {
        assert!(read(b"\x80\x02K\x01.").is_err());
        assert!(read(b"\x80\x02").is_err());
    }
}
