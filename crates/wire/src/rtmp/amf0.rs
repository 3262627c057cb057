//! AMF0, the encoding of RTMP commands: the values a publisher's commands carry, read from bytes that come
//! from the network (bounded depth, no allocation beyond what the bytes hold), and the few we answer with.

use thiserror::Error;

/// Deepest nesting of objects and arrays read; commands nest two levels at most.
const MAX_DEPTH: usize = 16;

/// Why a command could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmfError {
    /// The bytes end inside a value.
    #[error("AMF0 value cut short")]
    Truncated,
    /// A type marker this reader does not take (AMF3, references, movie clips, typed objects).
    #[error("AMF0 type {0:#04x} is not supported")]
    UnsupportedType(u8),
    /// Objects nested deeper than any command does.
    #[error("AMF0 values nested more than {MAX_DEPTH} deep")]
    TooDeep,
    /// A string that is not UTF-8.
    #[error("AMF0 string is not UTF-8")]
    NotUtf8,
}

/// One AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Marker 0: a double.
    Number(f64),
    /// Marker 1.
    Boolean(bool),
    /// Markers 2 (short) and 12 (long).
    String(String),
    /// Marker 3: properties in order.
    Object(Vec<(String, Value)>),
    /// Marker 5.
    Null,
    /// Marker 6.
    Undefined,
    /// Marker 8: properties in order (the declared count is only a hint and is not trusted).
    EcmaArray(Vec<(String, Value)>),
    /// Marker 10.
    StrictArray(Vec<Value>),
    /// Marker 11: milliseconds since the epoch (the time zone is ignored, as the specification says).
    Date(f64),
}

impl Value {
    /// The string inside, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number inside, if this is one.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A property of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(props) | Value::EcmaArray(props) => props.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Reads every value in `bytes` (a command's body is a sequence of values).
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Value>, AmfError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut values = Vec::new();
    while reader.at < bytes.len() {
        values.push(reader.value(0)?);
    }
    Ok(values)
}

/// Reads one value from the start of `bytes` and returns it with the bytes it took.
pub fn decode_one(bytes: &[u8]) -> Result<(Value, usize), AmfError> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.value(0)?;
    Ok((value, reader.at))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AmfError> {
        let end = self.at.checked_add(n).ok_or(AmfError::Truncated)?;
        let out = self.bytes.get(self.at..end).ok_or(AmfError::Truncated)?;
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, AmfError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, AmfError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<usize, AmfError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn f64(&mut self) -> Result<f64, AmfError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn string(&mut self, len: usize) -> Result<String, AmfError> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| AmfError::NotUtf8)
    }

    /// Properties up to the object-end marker (an empty key followed by marker 9).
    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Value)>, AmfError> {
        let mut props = Vec::new();
        loop {
            let len = self.u16()?;
            if len == 0 && self.bytes.get(self.at) == Some(&0x09) {
                self.at += 1;
                return Ok(props);
            }
            let key = self.string(len)?;
            props.push((key, self.value(depth + 1)?));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, AmfError> {
        if depth > MAX_DEPTH {
            return Err(AmfError::TooDeep);
        }
        Ok(match self.u8()? {
            0x00 => Value::Number(self.f64()?),
            0x01 => Value::Boolean(self.u8()? != 0),
            0x02 => {
                let len = self.u16()?;
                Value::String(self.string(len)?)
            }
            0x03 => Value::Object(self.properties(depth)?),
            0x05 => Value::Null,
            0x06 => Value::Undefined,
            0x08 => {
                self.u32()?; // the count, which writers get wrong; the end marker is what counts
                Value::EcmaArray(self.properties(depth)?)
            }
            0x0a => {
                let count = self.u32()?;
                // Every value takes at least one byte: the count cannot promise more than the bytes hold.
                if count > self.bytes.len() - self.at {
                    return Err(AmfError::Truncated);
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::StrictArray(items)
            }
            0x0b => {
                let ms = self.f64()?;
                self.take(2)?;
                Value::Date(ms)
            }
            0x0c => {
                let len = self.u32()?;
                Value::String(self.string(len)?)
            }
            other => return Err(AmfError::UnsupportedType(other)),
        })
    }
}

/// Appends a number.
pub fn put_number(out: &mut Vec<u8>, n: f64) {
    out.push(0x00);
    out.extend_from_slice(&n.to_be_bytes());
}

/// Appends a boolean.
pub fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(&[0x01, u8::from(b)]);
}

/// Appends a string (short form up to 65535 bytes, long form beyond).
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    match u16::try_from(s.len()) {
        Ok(len) => {
            out.push(0x02);
            out.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => {
            out.push(0x0c);
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

/// Appends null.
pub fn put_null(out: &mut Vec<u8>) {
    out.push(0x05);
}

/// Appends an object of properties.
pub fn put_object(out: &mut Vec<u8>, props: &[(&str, Value)]) {
    out.push(0x03);
    put_properties(out, props.iter().map(|(k, v)| (*k, v)));
}

/// Appends properties and the object-end marker.
fn put_properties<'a>(out: &mut Vec<u8>, props: impl Iterator<Item = (&'a str, &'a Value)>) {
    for (key, value) in props {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        put(out, value);
    }
    out.extend_from_slice(&[0, 0, 0x09]);
}

/// Appends any value.
pub fn put(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Number(n) => put_number(out, *n),
        Value::Boolean(b) => put_bool(out, *b),
        Value::String(s) => put_string(out, s),
        Value::Object(props) => {
            out.push(0x03);
            put_properties(out, props.iter().map(|(k, v)| (k.as_str(), v)));
        }
        Value::EcmaArray(props) => {
            out.push(0x08);
            out.extend_from_slice(&(props.len() as u32).to_be_bytes());
            put_properties(out, props.iter().map(|(k, v)| (k.as_str(), v)));
        }
        Value::Null => put_null(out),
        Value::Undefined => out.push(0x06),
        Value::StrictArray(items) => {
            out.push(0x0a);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                put(out, item);
            }
        }
        Value::Date(ms) => {
            out.push(0x0b);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_connect_command_as_ffmpeg_writes_it() {
        let mut bytes = Vec::new();
        put_string(&mut bytes, "connect");
        put_number(&mut bytes, 1.0);
        put_object(
            &mut bytes,
            &[
                ("app", Value::String("live".into())),
                ("type", Value::String("nonprivate".into())),
                ("fpad", Value::Boolean(false)),
                ("nested", Value::Object(vec![("x".into(), Value::Null)])),
            ],
        );
        let values = decode_all(&bytes).unwrap();
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_number(), Some(1.0));
        assert_eq!(values[2].get("app").and_then(Value::as_str), Some("live"));
        assert_eq!(values[2].get("nested"), Some(&Value::Object(vec![("x".into(), Value::Null)])));
    }

    #[test]
    fn every_value_survives_a_round_trip() {
        let value = Value::StrictArray(vec![
            Value::Number(-2.5),
            Value::Boolean(true),
            Value::String("x".repeat(70_000)),
            Value::EcmaArray(vec![("duration".into(), Value::Number(0.0))]),
            Value::Undefined,
            Value::Date(1.5e12),
            Value::Null,
        ]);
        let mut bytes = Vec::new();
        put(&mut bytes, &value);
        assert_eq!(decode_one(&bytes).unwrap(), (value, bytes.len()));
    }

    #[test]
    fn hostile_values_are_refused_without_allocating_what_they_claim() {
        assert_eq!(decode_all(&[0x02, 0xff, 0xff, b'a']), Err(AmfError::Truncated));
        assert_eq!(decode_all(&[0x0c, 0xff, 0xff, 0xff, 0xff]), Err(AmfError::Truncated));
        assert_eq!(decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05]), Err(AmfError::Truncated));
        assert_eq!(decode_all(&[0x11, 0x00]), Err(AmfError::UnsupportedType(0x11)));
        assert_eq!(decode_all(&[0x02, 0x00, 0x02, 0xff, 0xfe]), Err(AmfError::NotUtf8));
        // Objects inside objects, deeper than any command: refused before the stack grows.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x03, 0x00, 0x01, b'k']);
        }
        assert_eq!(decode_all(&deep), Err(AmfError::TooDeep));
        // An object that never ends.
        assert_eq!(decode_all(&[0x03, 0x00, 0x01, b'k', 0x05]), Err(AmfError::Truncated));
    }
}
