//! PHP values ↔ JSON values for `rpc()`, faithful where JSON can be: lists stay lists and
//! maps stay maps, ints stay ints and floats stay floats, strings must be UTF-8. What JSON
//! cannot hold (NAN, INF, binary strings, resources, arbitrary objects, recursion) is an
//! error that names where in the argument it was found.
//!
//! The Zval walkers are thin; the decisions (numbers, keys, paths) are pure functions with
//! unit tests.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use ext_php_rs::types::{ZendHashTable, Zval};
use ext_php_rs::zend::ClassEntry;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::error::ClientError;

/// Deeper than this is taken for a recursive structure (json_encode's default is 512; lock
/// service commands need a handful).
const MAX_DEPTH: usize = 128;

/// How a JSON number is represented in PHP.
#[derive(Debug, PartialEq)]
pub enum PhpNumber {
    Int(i64),
    Float(f64),
}

/// Integers that fit PHP's int stay ints; larger ones (above `PHP_INT_MAX`) become floats,
/// as `json_decode()` does.
pub fn unsigned_to_php(number: u64) -> PhpNumber {
    match i64::try_from(number) {
        Ok(int) => PhpNumber::Int(int),
        Err(_) => PhpNumber::Float(number as f64),
    }
}

/// A PHP float as JSON, which has no NAN or INF. serde_json writes whole floats as `1.0`, so
/// they come back as floats.
pub fn float_to_json(float: f64) -> Option<Number> {
    Number::from_f64(float)
}

/// Where a value sits inside an argument, for error messages: `$parameters['a'][0]`.
#[derive(Debug, Clone)]
pub struct Path(String);

impl Path {
    pub fn argument(name: &str) -> Self {
        Path(format!("${name}"))
    }

    fn key(&self, key: &JsonKey) -> Path {
        let mut path = self.0.clone();
        match key {
            JsonKey::Index(index) => write!(path, "[{index}]"),
            JsonKey::Name(name) => write!(path, "['{name}']"),
        }
        .expect("writing to a String");
        Path(path)
    }

    pub fn error(&self, problem: &str) -> ClientError {
        ClientError::value_error(format!("{}: {problem}", self.0))
    }

    fn type_error(&self, problem: &str) -> ClientError {
        ClientError::type_error(format!("{}: {problem}", self.0))
    }
}

/// A PHP array key as JSON sees it: list position, or object member name.
pub enum JsonKey<'a> {
    Index(i64),
    Name(&'a str),
}

/// A PHP array key, known to be valid UTF-8 when it is a string.
pub enum EntryKey {
    Index(i64),
    Name(String),
}

impl EntryKey {
    pub fn json_key(&self) -> JsonKey<'_> {
        match self {
            EntryKey::Index(index) => JsonKey::Index(*index),
            EntryKey::Name(name) => JsonKey::Name(name),
        }
    }
}

/// The entries of a PHP array in order. PHP allows any bytes in a string key, and
/// ext-php-rs's own iterators panic on one that is not UTF-8; this reports it as a
/// ValueError at `path` instead.
pub fn entries<'a>(array: &'a ZendHashTable, path: &Path) -> Result<Vec<(EntryKey, &'a Zval)>, ClientError> {
    let mut iter = array.iter();
    let mut out = Vec::with_capacity(array.len());
    while let Some((key, value)) = iter.next_zval() {
        let key = match key.long() {
            Some(index) => EntryKey::Index(index),
            None => EntryKey::Name(key.str().ok_or_else(|| path.error("has a key that is not valid UTF-8"))?.to_owned()),
        };
        out.push((key, value));
    }
    Ok(out)
}

/// Converts a PHP array to a JSON object (as command parameters must be): `[]` is `{}`.
pub fn to_json_object(array: &ZendHashTable, path: &Path) -> Result<Value, ClientError> {
    let entries = entries(array, path)?;
    if !entries.is_empty() && is_list(&entries) {
        return Err(path.error("must be an array with string keys (a JSON object), not a list"));
    }
    Ok(Value::Object(map_to_json(entries, path, 0)?))
}

/// Whether the keys are 0, 1, 2, ... in order: a JSON array rather than an object.
fn is_list(entries: &[(EntryKey, &Zval)]) -> bool {
    entries.iter().enumerate().all(|(position, (key, _))| matches!(key, EntryKey::Index(index) if *index as usize == position))
}

fn to_json_at(value: &Zval, path: &Path, depth: usize) -> Result<Value, ClientError> {
    if depth > MAX_DEPTH {
        return Err(path.error(&format!("nested more than {MAX_DEPTH} levels deep (a recursive reference?)")));
    }
    let value = value.indirect().unwrap_or(value).dereference();
    if value.is_null() {
        Ok(Value::Null)
    } else if let Some(bool) = value.bool() {
        Ok(Value::Bool(bool))
    } else if let Some(int) = value.long() {
        Ok(Value::Number(int.into()))
    } else if let Some(float) = value.double() {
        float_to_json(float)
            .map(Value::Number)
            .ok_or_else(|| path.error(&format!("{float} cannot be represented in JSON")))
    } else if value.is_string() {
        value
            .str()
            .map(|s| Value::String(s.to_owned()))
            .ok_or_else(|| path.error("is not valid UTF-8 (JSON strings are Unicode text)"))
    } else if let Some(array) = value.array() {
        let entries = entries(array, path)?;
        if is_list(&entries) {
            list_to_json(entries, path, depth)
        } else {
            map_to_json(entries, path, depth).map(Value::Object)
        }
    } else if let Some(object) = value.object() {
        let serializable = ClassEntry::try_find("JsonSerializable").is_some_and(|ce| object.instance_of(ce));
        if serializable {
            // A PHP exception thrown by jsonSerialize() stays pending and reaches the caller.
            let serialized =
                object.try_call_method("jsonSerialize", vec![]).map_err(|_| ClientError::PhpExceptionPending)?;
            to_json_at(&serialized, path, depth + 1)
        } else if object.get_class_name().is_ok_and(|name| name == "stdClass") {
            let properties = object.get_properties().map_err(|e| path.error(&e.to_string()))?;
            map_to_json(entries(properties, path)?, path, depth).map(Value::Object)
        } else {
            let class = object.get_class_name().unwrap_or_default();
            Err(path.type_error(&format!(
                "an object of class {class} cannot be sent as JSON (only stdClass and JsonSerializable can)"
            )))
        }
    } else {
        Err(path.type_error(&format!("a {} cannot be sent as JSON", php_type_name(value))))
    }
}

/// The type name PHP uses in its own messages (`int`, `array`, a class name, ...).
pub fn php_type_name(value: &Zval) -> String {
    let value = value.dereference();
    let name = if value.is_null() {
        "null"
    } else if value.is_bool() {
        "bool"
    } else if value.is_long() {
        "int"
    } else if value.is_double() {
        "float"
    } else if value.is_string() {
        "string"
    } else if value.is_array() {
        "array"
    } else if let Some(object) = value.object() {
        return object.get_class_name().unwrap_or_else(|_| "object".into());
    } else if value.is_resource() {
        "resource"
    } else {
        "value of unknown type"
    };
    name.to_owned()
}

fn list_to_json(entries: Vec<(EntryKey, &Zval)>, path: &Path, depth: usize) -> Result<Value, ClientError> {
    entries
        .into_iter()
        .enumerate()
        .map(|(index, (_, item))| to_json_at(item, &path.key(&JsonKey::Index(index as i64)), depth + 1))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn map_to_json(entries: Vec<(EntryKey, &Zval)>, path: &Path, depth: usize) -> Result<Map<String, Value>, ClientError> {
    let mut map = Map::new();
    for (key, item) in entries {
        let item = to_json_at(item, &path.key(&key.json_key()), depth + 1)?;
        let name = match key {
            EntryKey::Index(index) => index.to_string(),
            EntryKey::Name(name) => name,
        };
        map.insert(name, item);
    }
    Ok(map)
}

/// Decodes the `result` member of a reply payload into a PHP value: objects become arrays
/// with string keys in the order the server sent them (as `json_decode($json, true)` does),
/// so `{}` and `[]` both come back as `[]`.
pub fn reply_result_to_php(payload: &[u8]) -> Result<Zval, serde_json::Error> {
    #[derive(Deserialize)]
    struct ResultMember<'a> {
        #[serde(borrow)]
        result: &'a RawValue,
    }
    let member: ResultMember = serde_json::from_slice(payload)?;
    ZvalSeed.deserialize(&mut serde_json::Deserializer::from_str(member.result.get()))
}

/// Builds a Zval straight from JSON text, keeping map order (no intermediate `Value`).
struct ZvalSeed;

impl<'de> DeserializeSeed<'de> for ZvalSeed {
    type Value = Zval;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Zval, D::Error> {
        deserializer.deserialize_any(ZvalVisitor)
    }
}

struct ZvalVisitor;

impl<'de> Visitor<'de> for ZvalVisitor {
    type Value = Zval;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Zval, E> {
        Ok(Zval::null())
    }

    fn visit_bool<E: de::Error>(self, bool: bool) -> Result<Zval, E> {
        let mut zval = Zval::new();
        zval.set_bool(bool);
        Ok(zval)
    }

    fn visit_i64<E: de::Error>(self, int: i64) -> Result<Zval, E> {
        let mut zval = Zval::new();
        zval.set_long(int);
        Ok(zval)
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Zval, E> {
        let mut zval = Zval::new();
        match unsigned_to_php(number) {
            PhpNumber::Int(int) => zval.set_long(int),
            PhpNumber::Float(float) => zval.set_double(float),
        }
        Ok(zval)
    }

    fn visit_f64<E: de::Error>(self, float: f64) -> Result<Zval, E> {
        let mut zval = Zval::new();
        zval.set_double(float);
        Ok(zval)
    }

    fn visit_str<E: de::Error>(self, string: &str) -> Result<Zval, E> {
        let mut zval = Zval::new();
        zval.set_string(string, false).map_err(E::custom)?;
        Ok(zval)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Zval, A::Error> {
        let mut array = ZendHashTable::new();
        while let Some(item) = items.next_element_seed(ZvalSeed)? {
            array.push(item).map_err(de::Error::custom)?;
        }
        let mut zval = Zval::new();
        zval.set_hashtable(array);
        Ok(zval)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Zval, A::Error> {
        let mut array = ZendHashTable::new();
        while let Some(name) = members.next_key::<Cow<'de, str>>()? {
            let item = members.next_value_seed(ZvalSeed)?;
            array.insert(name.as_ref(), item).map_err(de::Error::custom)?;
        }
        let mut zval = Zval::new();
        zval.set_hashtable(array);
        Ok(zval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ints_stay_ints_and_big_ones_become_floats() {
        assert_eq!(unsigned_to_php(i64::MAX as u64), PhpNumber::Int(i64::MAX));
        assert_eq!(unsigned_to_php(0), PhpNumber::Int(0));
        assert_eq!(unsigned_to_php(u64::MAX), PhpNumber::Float(u64::MAX as f64));
    }

    #[test]
    fn whole_floats_stay_floats_through_json_text() {
        let sent = Value::Number(float_to_json(1.0).unwrap());
        let text = serde_json::to_string(&sent).unwrap();
        assert_eq!(text, "1.0");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert!(back.is_f64());
        assert!(json!(-0.5).is_f64());
    }

    #[test]
    fn json_has_no_nan_or_infinity() {
        assert!(float_to_json(f64::NAN).is_none());
        assert!(float_to_json(f64::INFINITY).is_none());
        assert!(float_to_json(f64::NEG_INFINITY).is_none());
    }

    #[test]
    fn paths_name_the_argument_and_each_step() {
        let path = Path::argument("parameters").key(&JsonKey::Name("keys")).key(&JsonKey::Index(2));
        assert_eq!(path.error("is bad").to_string(), "$parameters['keys'][2]: is bad");
    }
}
