//! A tokenizer.json's BPE model section as read, before any check: the vocab and merges as
//! typed lists, everything else as JSON. It is made two ways, and `tokenizer_json` checks
//! both the same way:
//!
//! - from the text (`Document`), without a `serde_json::Value` for any vocab entry or merge.
//!   The big vocabularies have a million of those strings (o200k: 200,000 entries and 450,000
//!   merges): building them as `Value`s and freeing them cost as much as the rest of the
//!   load, and the first encode after it paid 10-25 ms more while glibc's malloc gathered up
//!   the freed blocks at the next large allocation. Read here, a string without escapes
//!   borrows the text, and the lists are a few large blocks.
//! - from a `Value` (`ModelSection::from_value`), for documents made in memory (training,
//!   SentencePiece conversion) and for any text the typed reader refuses.
//!
//! The typed reader accepts only well-formed vocabs and merges: anything else (an id that is
//! not a non-negative integer, a merge of the wrong shape, a Unigram model's list of pieces,
//! invalid JSON) fails it, and `tokenizer_json::from_str` then reads the text as a `Value`, so that
//! every error in a file is found by the checks on the `Value`'s parts, in their order.

use rustc_hash::FxHashMap;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::fmt;
use std::marker::PhantomData;

type DeResult<T, E> = std::result::Result<T, E>;

/// A field of the model section that must have one shape.
pub enum Part<T> {
    Missing,
    /// Present, with another shape (the checks' error names the one expected).
    Malformed,
    Read(T),
}

/// An id as read: a non-negative integer, or the JSON value that is not one (from a `Value`
/// only; the typed reader leaves files with such ids to the `Value` path).
pub type RawId<'a> = Result<u64, &'a Value>;

/// One entry of `merges`, in either of the reference's spellings.
pub enum Merge<'a> {
    /// `"left right"`: split later, where a string without exactly one space is an error.
    Joined(Cow<'a, str>),
    Pair(Cow<'a, str>, Cow<'a, str>),
    /// A list that is not two strings (from a `Value` only).
    NotAPair,
    /// Neither a string nor a list (from a `Value` only).
    Neither,
}

impl Merge<'_> {
    fn from_value(value: &Value) -> Merge<'_> {
        match value {
            Value::String(s) => Merge::Joined(s.into()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(l), Value::String(r)] => Merge::Pair(l.into(), r.into()),
                _ => Merge::NotAPair,
            },
            _ => Merge::Neither,
        }
    }

    /// The entry as it was written (malformed entries stop the load before anyone asks).
    pub fn to_value(&self) -> Value {
        match self {
            Merge::Joined(s) => Value::String(s.to_string()),
            Merge::Pair(l, r) => Value::Array(vec![Value::String(l.to_string()), Value::String(r.to_string())]),
            Merge::NotAPair | Merge::Neither => Value::Null,
        }
    }
}

pub struct ModelSection<'a> {
    /// Token -> id in file order; each token once (see `keep_last_of_each_key`).
    pub vocab: Part<Vec<(Cow<'a, str>, RawId<'a>)>>,
    pub merges: Part<Vec<Merge<'a>>>,
    /// Every other key, in file order. A null holds the place of "merges", where the merges
    /// are written back when they must be kept verbatim.
    pub rest: Map<String, Value>,
}

impl<'a> ModelSection<'a> {
    fn new() -> Self {
        ModelSection { vocab: Part::Missing, merges: Part::Missing, rest: Map::new() }
    }

    /// The parts of a model section given as JSON (of any shape: a model that is not an
    /// object has no fields).
    pub fn from_value(model: &'a Value) -> Self {
        let mut section = ModelSection::new();
        for (key, value) in model.as_object().into_iter().flatten() {
            match key.as_str() {
                "vocab" => {
                    let entries = value.as_object().map(|entries| {
                        entries.iter().map(|(token, id)| (token.into(), id.as_u64().ok_or(id))).collect()
                    });
                    section.vocab = entries.map_or(Part::Malformed, Part::Read);
                }
                "merges" => {
                    let list = value.as_array().map(|list| list.iter().map(Merge::from_value).collect());
                    section.merges = list.map_or(Part::Malformed, Part::Read);
                    section.rest.insert(key.clone(), Value::Null);
                }
                _ => {
                    section.rest.insert(key.clone(), value.clone());
                }
            }
        }
        section
    }
}

/// A whole tokenizer.json read by the typed reader.
pub struct Document<'a> {
    /// The top-level keys but "model", as `from_value` leaves them after taking the model out.
    pub top: Map<String, Value>,
    pub model: ModelSection<'a>,
}

impl<'de> Deserialize<'de> for Document<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> DeResult<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Document<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tokenizer.json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> DeResult<Document<'de>, A::Error> {
                let (mut top, mut model) = (Map::new(), None);
                // A key given twice keeps its first place and its last value, as in a `Value`.
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        model = Some(map.next_value::<ModelSection>()?);
                        top.insert(key, Value::Null);
                    } else {
                        let value = map.next_value()?;
                        top.insert(key, value);
                    }
                }
                let model = model.ok_or_else(|| de::Error::missing_field("model"))?;
                // Taken out as `from_value` takes it out (the last key moves into its place),
                // so that the other keys are in the same order either way.
                top.remove("model");
                Ok(Document { top, model })
            }
        }
        deserializer.deserialize_map(Top)
    }
}

impl<'de> Deserialize<'de> for ModelSection<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> DeResult<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = ModelSection<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a model object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> DeResult<ModelSection<'de>, A::Error> {
                let mut section = ModelSection::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "vocab" => section.vocab = Part::Read(map.next_value_seed(VocabEntries)?),
                        "merges" => {
                            section.merges = Part::Read(map.next_value_seed(MergeList)?);
                            section.rest.insert(key, Value::Null);
                        }
                        _ => {
                            let value = map.next_value()?;
                            section.rest.insert(key, value);
                        }
                    }
                }
                Ok(section)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// A string that borrows the text when it has no escapes (serde's own `Cow<str>` always
/// copies).
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> DeResult<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> DeResult<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> DeResult<Self::Value, E> {
        Ok(Cow::Owned(s.to_string()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> DeResult<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

/// `vocab`: an object of token -> non-negative integer.
struct VocabEntries;

impl<'de> DeserializeSeed<'de> for VocabEntries {
    type Value = Vec<(Cow<'de, str>, RawId<'de>)>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> DeResult<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for VocabEntries {
    type Value = Vec<(Cow<'de, str>, RawId<'de>)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of token -> id")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> DeResult<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((token, id)) = map.next_entry_seed(Text, PhantomData::<u64>)? {
            entries.push((token, Ok(id)));
        }
        keep_last_of_each_key(&mut entries);
        Ok(entries)
    }
}

/// `merges`: a list of `"left right"` strings or `[left, right]` pairs, mixed as they come.
struct MergeList;

impl<'de> DeserializeSeed<'de> for MergeList {
    type Value = Vec<Merge<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> DeResult<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MergeList {
    type Value = Vec<Merge<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of merges")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> DeResult<Self::Value, A::Error> {
        let mut merges = Vec::new();
        while let Some(merge) = seq.next_element_seed(OneMerge)? {
            merges.push(merge);
        }
        Ok(merges)
    }
}

struct OneMerge;

impl<'de> DeserializeSeed<'de> for OneMerge {
    type Value = Merge<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> DeResult<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OneMerge {
    type Value = Merge<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a pair of strings")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> DeResult<Self::Value, E> {
        Ok(Merge::Joined(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> DeResult<Self::Value, E> {
        Ok(Merge::Joined(Cow::Owned(s.to_string())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> DeResult<Self::Value, E> {
        Ok(Merge::Joined(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> DeResult<Self::Value, A::Error> {
        let left = seq.next_element_seed(Text)?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let right = seq.next_element_seed(Text)?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(Merge::Pair(left, right))
    }
}

/// Makes `entries` what a `serde_json::Map` of them holds, and so what `from_value` sees: a
/// key given twice keeps its first place and takes its last value.
fn keep_last_of_each_key<T>(entries: &mut Vec<(Cow<str>, T)>) {
    // (first place, later place) of each repeat, in file order.
    let mut repeats = Vec::new();
    {
        let mut first = FxHashMap::with_capacity_and_hasher(entries.len(), Default::default());
        for (place, (key, _)) in entries.iter().enumerate() {
            match first.entry(key.as_ref()) {
                Entry::Occupied(e) => repeats.push((*e.get(), place)),
                Entry::Vacant(e) => {
                    e.insert(place);
                }
            }
        }
    }
    if repeats.is_empty() {
        return;
    }
    let mut repeated = vec![false; entries.len()];
    for (first, later) in repeats {
        // Swapped in file order, so the last value is the one left in the first place.
        let (head, tail) = entries.split_at_mut(later);
        std::mem::swap(&mut head[first].1, &mut tail[0].1);
        repeated[later] = true;
    }
    let mut place = 0;
    entries.retain(|_| {
        place += 1;
        !repeated[place - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_keeps_its_first_place_and_its_last_value_as_in_a_value() {
        let text = r#"{"a": 1, "b": 2, "a": 3, "c": 4, "a": 5, "b": 6, "d": 7}"#;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let typed: Vec<(String, u64)> = VocabEntries
            .deserialize(&mut deserializer)
            .unwrap()
            .into_iter()
            .map(|(key, id)| (key.into_owned(), id.unwrap()))
            .collect();
        let value: Value = serde_json::from_str(text).unwrap();
        let general: Vec<(String, u64)> =
            value.as_object().unwrap().iter().map(|(key, id)| (key.clone(), id.as_u64().unwrap())).collect();
        assert_eq!(typed, general);
        assert_eq!(typed, [("a".into(), 5), ("b".into(), 6), ("c".into(), 4), ("d".into(), 7)]);
    }

    #[test]
    fn strings_without_escapes_borrow_the_text() {
        let text = r#"{"model": {"vocab": {"plain": 0, "esc\u0061ped": 1}, "merges": ["p l", ["a", "b\n"]]}}"#;
        let document: Document = serde_json::from_str(text).unwrap();
        let Part::Read(vocab) = &document.model.vocab else { panic!("no vocab") };
        assert!(matches!(vocab[0].0, Cow::Borrowed("plain")));
        assert!(matches!(&vocab[1].0, Cow::Owned(s) if s == "escaped"));
        let Part::Read(merges) = &document.model.merges else { panic!("no merges") };
        assert!(matches!(merges[0], Merge::Joined(Cow::Borrowed("p l"))));
        assert!(matches!(&merges[1], Merge::Pair(Cow::Borrowed("a"), Cow::Owned(b)) if b == "b\n"));
    }
}
