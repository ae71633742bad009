//! Python bindings (`tokensmith._core`). No logic lives here: argument conversion, GIL
//! release, and mapping core errors to the exception classes defined in Python.

mod batch_chunks;
mod flat_ids;
mod id_lists;
mod utf8;

use crate::embed::{add_noise, normal_at, stream_key, Matrix};
use crate::error::Error;
use crate::formats::{sentencepiece, tiktoken, tokenizer_json};
use crate::special::{AddedToken, Protected, SpecialPolicy};
use crate::tokenizer::{byte_ranges, Tokenizer};
use crate::train::{Skip, Trainer, WordCounts, WordOutcome};
use flat_ids::{FlatIds, RoomHint};
use id_lists::IdInts;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyError, PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple, PyType};
use rayon::prelude::*;
use rustc_hash::FxHashSet;
use std::borrow::Cow;
use std::sync::Arc;

/// The exception classes live in `tokensmith.errors`; look them up once.
fn exception<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: GILOnceCell<Py<PyModule>> = GILOnceCell::new();
    let module = MODULE.get_or_try_init(py, || py.import("tokensmith.errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.downcast_into::<PyType>()?)
}

fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    if let Error::Memory(_) = err {
        return PyMemoryError::new_err(message);
    }
    let class = match &err {
        Error::Format { .. } => "TokenizerFormatError",
        Error::Unsupported(_) => "UnsupportedTokenizerError",
        Error::SpecialToken { .. } => "SpecialTokenError",
        Error::Invalid(_) => "InvalidInputError",
        Error::Io { .. } | Error::Memory(_) => "TokenizerError",
    };
    let class = match exception(py, class) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let args = match &err {
        Error::SpecialToken { token, offset } => (message, Some((token.clone(), *offset))).into_pyobject(py),
        _ => (message, None::<(String, usize)>).into_pyobject(py),
    };
    match args.and_then(|a| class.call1(a)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

trait IntoPy<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for crate::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// Bytes of Python objects per token of a result: a list slot and an int; with offsets
/// also a (start, end) tuple and its ints.
const IDS: usize = 40;
const IDS_AND_OFFSETS: usize = 160;
/// Per UTF-8 byte of a decoded text: at most 4 (one char beyond Latin-1 makes Python store
/// every char in 4 bytes).
const STR: usize = 4;

/// Whether Python has room for the objects of a result of `items` tokens. PyO3 panics
/// when it cannot make an int of a result (an abort: the panic cannot allocate either),
/// so a result too large for the memory left is a `MemoryError` before the conversion.
/// Checked as the working memory of encoding is (`tokenizer::check_working_memory`).
fn check_python_room(items: usize, bytes_each: usize) -> crate::Result<()> {
    crate::error::Error::check_memory(items.saturating_mul(bytes_each), || "the Python result".to_string())
}

/// The items of a Python sequence (not a str), in a vector reserved fallibly: a list of
/// ids too long for the memory left is a `MemoryError`, where PyO3's own extraction aborts.
fn sequence_arg<'py, T>(
    items: &Bound<'py, PyAny>,
    item: impl Fn(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Vec<T>> {
    if items.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("expected a sequence, got str"));
    }
    let mut out = Vec::new();
    Error::reserve(&mut out, items.len()?, "the ids given").map_err(|e| PyMemoryError::new_err(e.to_string()))?;
    for x in items.try_iter()? {
        out.push(item(&x?)?);
    }
    Ok(out)
}

fn ids_arg(ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    sequence_arg(ids, |id| id.extract::<u32>())
}

/// The UTF-8 of one text to encode: a long one transcoded here (see `utf8`).
fn text<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, str>> {
    utf8::utf8(s).map_err(|e| text_error(s, e))
}

/// `&str` of a Python str (CPython's UTF-8, kept in the str): the texts of a batch.
fn text_ref<'a>(s: &'a Bound<'_, PyString>) -> PyResult<&'a str> {
    s.to_str().map_err(|e| text_error(s, e))
}

/// A clear error for lone surrogates (not valid UTF-8).
fn text_error(s: &Bound<'_, PyString>, e: PyErr) -> PyErr {
    // Python makes the UTF-8 form of a non-ASCII str on first use: that can fail too.
    if e.is_instance_of::<PyMemoryError>(s.py()) {
        return e;
    }
    let position = s
        .call_method1("encode", ("utf-32-le", "surrogatepass"))
        .ok()
        .and_then(|b| b.extract::<Vec<u8>>().ok())
        .and_then(|b| {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .position(|cp| (0xD800..0xE000).contains(&cp))
        });
    match position {
        Some(i) => PyValueError::new_err(format!(
            "text contains a lone surrogate at index {i}; it is not valid Unicode and cannot be tokenized"
        )),
        None => PyValueError::new_err("text is not valid Unicode"),
    }
}

fn texts<'py>(items: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyString>>> {
    if items.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("expected a list of str, got a single str"));
    }
    items
        .try_iter()?
        .map(|item| {
            let item = item?;
            item.downcast_into::<PyString>().map_err(|e| {
                PyTypeError::new_err(format!("expected str in the batch, got {}", e.into_inner().get_type()))
            })
        })
        .collect()
}

/// Runs `f` with the GIL released, its parallel work in a pool that survives `fork`
/// ([`crate::pool`]).
fn without_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.allow_threads(|| crate::pool::install(f))
}

#[pyclass(module = "tokensmith._core", name = "CoreTokenizer", frozen)]
struct PyTokenizer {
    // Mutation (adding tokens) builds a new tokenizer and swaps it in, so encodes in flight
    // never see a half-updated one and clones for worker threads are cheap. The lock is
    // held only to clone or swap the Arc, never while waiting for anything else, so a
    // thread holding the GIL that waits for it cannot deadlock with one that holds it.
    inner: std::sync::RwLock<Arc<Tokenizer>>,
    /// Serializes updates (two `add_tokens` at once must not lose one's tokens). Taken
    /// with the GIL released: an update waiting for it must not hold what others need.
    updating: std::sync::Mutex<()>,
    /// A Python int for every id, made once for the process (`IdInts`): a list of ids is
    /// then references to these, not a new int per token (which took about 35 ns per id, a
    /// fifth of a per-document encode). Ids past it (tokens added later) get new ints.
    id_objects: GILOnceCell<IdInts>,
    /// The last tuple of token strings `encode_labeled` was allowed inside its protected
    /// ranges, for which tokenizer, and their ids: chat data passes the same tuple for every
    /// chat, and turning Llama 3's 251 special tokens into ids again took 40 us a chat.
    inside_memo: std::sync::Mutex<Option<(Py<PyTuple>, std::sync::Weak<Tokenizer>, FxHashSet<u32>)>>,
    /// The room to make for `encode_batch_flat`'s ids (`flat_ids::RoomHint`).
    flat_room: RoomHint,
}

impl PyTokenizer {
    fn new(tokenizer: Tokenizer) -> Self {
        Self::sharing(Arc::new(tokenizer))
    }

    /// A tokenizer of its own (its added tokens, its memos) around `tokenizer`.
    fn sharing(tokenizer: Arc<Tokenizer>) -> Self {
        PyTokenizer {
            inner: std::sync::RwLock::new(tokenizer),
            updating: std::sync::Mutex::new(()),
            id_objects: GILOnceCell::new(),
            inside_memo: std::sync::Mutex::new(None),
            flat_room: RoomHint::new(),
        }
    }

    /// `ids` as a Python list of ints.
    fn id_list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        self.id_table(py).list(py, ids)
    }

    /// Each row of ids as a Python list of ints: `id_list` for many rows, with one tally.
    fn id_lists<'py>(&self, py: Python<'py>, rows: &[&[u32]]) -> PyResult<Vec<Bound<'py, PyList>>> {
        self.id_table(py).lists(py, rows)
    }

    fn id_table(&self, py: Python<'_>) -> &IdInts {
        // Every real vocabulary fits under 2^20 (30 MB of ints at most); ids past the table
        // get new ints.
        self.id_objects.get_or_init(py, || IdInts::new(py, self.get().vocab_size().min(1 << 20) as u32))
    }

    fn get(&self) -> Arc<Tokenizer> {
        self.read().clone()
    }

    /// The tokenizer, for work done with the GIL held throughout: two atomic operations,
    /// where `get` takes four (the lock's, then the `Arc`'s). A guard must not be held
    /// where the GIL may be released, nor where Python code runs (an error made into its
    /// Python class, a list): a thread waiting for the GIL with it would block `update`,
    /// and every reader after it, the GIL's holder among them.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<Tokenizer>> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to a copy of the tokenizer and swaps the copy in, with the GIL
    /// released while it waits for other updates and while it works.
    fn update<T: Send>(
        &self,
        py: Python<'_>,
        change: impl FnOnce(&mut Tokenizer) -> crate::Result<T> + Send,
    ) -> PyResult<T> {
        without_gil(py, || {
            let _one_at_a_time = self.updating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut updated = (*self.get()).clone();
            let out = change(&mut updated)?;
            *self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(updated);
            Ok(out)
        })
        .or_raise(py)
    }

    /// The tokenizer, when its tokens are raw bytes (what the byte methods need).
    fn byte_level(&self, py: Python<'_>) -> PyResult<Arc<Tokenizer>> {
        let tokenizer = self.get();
        if !tokenizer.is_byte_level() {
            return Err(to_py(py, Error::Invalid("this needs a byte-level BPE tokenizer (tokens that stand for raw bytes)".into())));
        }
        Ok(tokenizer)
    }

    /// The ids of `tokens`, each an added or special token.
    fn only_ids(&self, py: Python<'_>, tokens: Vec<String>) -> PyResult<FxHashSet<u32>> {
        match self.policy(py, "only", Some(tokens))? {
            SpecialPolicy::Only(ids) => Ok(ids),
            _ => unreachable!("an \"only\" policy"),
        }
    }

    /// `only_ids` of a sequence of token strings, remembered for the last tuple (immutable,
    /// so the same object means the same tokens) and tokenizer.
    fn inside_ids(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<FxHashSet<u32>> {
        let tokenizer = self.get();
        let mut memo = self.inside_memo.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let (Some((tuple, of, ids)), Ok(given)) = (memo.as_ref(), tokens.downcast::<PyTuple>()) {
            if tuple.as_ptr() == given.as_ptr() && std::sync::Weak::as_ptr(of) == Arc::as_ptr(&tokenizer) {
                return Ok(ids.clone());
            }
        }
        let ids = self.only_ids(py, tokens.extract()?)?;
        if let Ok(given) = tokens.downcast::<PyTuple>() {
            *memo = Some((given.clone().unbind(), Arc::downgrade(&tokenizer), ids.clone()));
        }
        Ok(ids)
    }

    /// `encode_with_offsets` with the tokens allowed inside protected ranges as ids.
    #[allow(clippy::too_many_arguments)]
    fn offsets(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyString>,
        add_special_tokens: bool,
        policy: &str,
        allowed: Option<Vec<String>>,
        protected: Vec<(usize, usize)>,
        allowed_inside: Option<FxHashSet<u32>>,
    ) -> PyResult<(Vec<u32>, Vec<(usize, usize)>)> {
        let s = &*self::text(text)?;
        let policy = self.policy(py, policy, allowed)?;
        let tokenizer = self.get();
        without_gil(py, || {
            let merged = match protected.is_empty() {
                true => Vec::new(),
                false => byte_ranges(s, &protected),
            };
            let protected = Protected { ranges: &merged, allowed: allowed_inside.as_ref() };
            let encoded = tokenizer.encode_with_offsets(s, &policy, protected, add_special_tokens)?;
            check_python_room(encoded.0.len(), IDS_AND_OFFSETS)?;
            Ok(encoded)
        })
        .or_raise(py)
    }

    /// The policy of a `special` argument as users write it: "allow", "text", "raise", or a
    /// collection of token strings (what `_policy` in Python checks for the other methods).
    fn special_policy(&self, py: Python<'_>, special: &Bound<'_, PyAny>) -> PyResult<SpecialPolicy> {
        if let Ok(name) = special.downcast::<PyString>() {
            return match name.to_str()? {
                "allow" => Ok(SpecialPolicy::Allow),
                "text" => Ok(SpecialPolicy::Text),
                "raise" => Ok(SpecialPolicy::Raise),
                _ => Err(PyValueError::new_err(format!(
                    "special must be \"allow\", \"text\", \"raise\" or a collection of token strings, got {}",
                    special.repr()?
                ))),
            };
        }
        // As `list(special)` in `_policy`: a TypeError from iterating is the one below.
        let items = match special.try_iter().and_then(|items| items.collect::<PyResult<Vec<_>>>()) {
            Ok(items) => items,
            Err(e) if e.is_instance_of::<PyTypeError>(py) => {
                let name = special.get_type().name()?;
                return Err(PyTypeError::new_err(format!("special must be a str or a collection of str, got {name}")));
            }
            Err(e) => return Err(e),
        };
        let mut tokens = Vec::with_capacity(items.len());
        for item in &items {
            let token = item.downcast::<PyString>().map_err(|_| PyTypeError::new_err("special must be a collection of token strings"))?;
            tokens.push(token.to_str()?.to_owned());
        }
        self.policy(py, "only", Some(tokens))
    }

    fn policy(&self, py: Python<'_>, policy: &str, allowed: Option<Vec<String>>) -> PyResult<SpecialPolicy> {
        Ok(match (policy, allowed) {
            ("allow", None) => SpecialPolicy::Allow,
            ("text", None) => SpecialPolicy::Text,
            ("raise", None) => SpecialPolicy::Raise,
            ("only", Some(allowed)) => {
                let tokenizer = self.get();
                let mut ids = FxHashSet::default();
                for content in allowed {
                    match tokenizer.added.id_of(&content) {
                        Some(id) => ids.insert(id),
                        None => {
                            return Err(to_py(
                                py,
                                Error::Invalid(format!(
                                    "{content:?} is not an added or special token of this tokenizer"
                                )),
                            ))
                        }
                    };
                }
                SpecialPolicy::Only(ids)
            }
            (other, _) => {
                return Err(PyValueError::new_err(format!(
                    "special must be \"allow\", \"text\", \"raise\" or a set of token strings, got {other:?}"
                )))
            }
        })
    }
}

fn read(py: Python<'_>, path: &str) -> PyResult<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(format!("{path}: no such file")),
        std::io::ErrorKind::InvalidData => {
            to_py(py, Error::format(path, "the file is not valid UTF-8 text"))
        }
        _ => to_py(py, Error::Io { path: path.into(), message: e.to_string() }),
    })
}

/// Ids (`SHORT_IDS`) above this many are not kept between calls.
const SHORT_IDS_KEPT: usize = 1 << 16;

thread_local! {
    /// The ids of a short text's `encode`, copied into its Python list: one vector per
    /// thread, not an allocation and a free per call.
    static SHORT_IDS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[pymethods]
impl PyTokenizer {
    #[staticmethod]
    fn from_file(py: Python<'_>, path: &str) -> PyResult<Self> {
        let json = read(py, path)?;
        let tokenizer = without_gil(py, || tokenizer_json::from_str(&json, path)).or_raise(py)?;
        Ok(Self::new(tokenizer))
    }

    #[staticmethod]
    #[pyo3(signature = (json, source = "<string>"))]
    fn from_str(py: Python<'_>, json: &str, source: &str) -> PyResult<Self> {
        let tokenizer = without_gil(py, || tokenizer_json::from_str(json, source)).or_raise(py)?;
        Ok(Self::new(tokenizer))
    }

    #[staticmethod]
    fn from_tiktoken(py: Python<'_>, path: &str, pattern: &str, special_tokens: Vec<(String, u32)>) -> PyResult<Self> {
        let text = read(py, path)?;
        let tokenizer = without_gil(
            py, || {
                let ranks = tiktoken::parse_ranks(&text, path)?;
                tiktoken::build(ranks, pattern, &special_tokens)
            })
            .or_raise(py)?;
        Ok(Self::new(tokenizer))
    }

    /// A rank file's contents, already read (and checked) by the caller; `source` names it.
    #[staticmethod]
    fn from_tiktoken_data(
        py: Python<'_>,
        data: &[u8],
        source: &str,
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> PyResult<Self> {
        let tokenizer = without_gil(py, || {
            let text = std::str::from_utf8(data).map_err(|_| Error::format(source, "the file is not valid UTF-8 text"))?;
            tiktoken::build(tiktoken::parse_ranks(text, source)?, pattern, &special_tokens)
        })
        .or_raise(py)?;
        Ok(Self::new(tokenizer))
    }

    /// tiktoken's `Encoding(mergeable_ranks=...)`: the ranks given as (bytes, rank) pairs.
    #[staticmethod]
    fn from_tiktoken_ranks(
        py: Python<'_>,
        ranks: Vec<(Vec<u8>, u32)>,
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> PyResult<Self> {
        let tokenizer = without_gil(py, || tiktoken::build(ranks, pattern, &special_tokens)).or_raise(py)?;
        Ok(Self::new(tokenizer))
    }

    #[staticmethod]
    fn from_sentencepiece(py: Python<'_>, path: &str) -> PyResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(format!("{path}: no such file")),
            _ => to_py(py, Error::Io { path: path.into(), message: e.to_string() }),
        })?;
        let tokenizer = without_gil(py, || sentencepiece::from_bytes(&bytes, path)).or_raise(py)?;
        Ok(Self::new(tokenizer))
    }

    /// `Tokenizer.encode`, whose `special` comes here unchecked: checking it in Python took
    /// a tenth of the Python layer's time (about 50 of 140 ns a call, 2026-12-04), and a
    /// per-document call is about 1.3 us.
    /// The tiktoken drop-in passes a checked policy and its `allowed` tokens, as to the other
    /// methods.
    #[pyo3(signature = (text, add_special_tokens, special, allowed = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'_, PyAny>,
        add_special_tokens: bool,
        special: &Bound<'_, PyAny>,
        allowed: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let text = text
            .downcast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("expected str, got {}", text.get_type())))?;
        let s = &*self::text(text)?;
        let policy = match allowed {
            Some(allowed) => self.policy(py, special.extract::<&str>()?, Some(allowed))?,
            None => self.special_policy(py, special)?,
        };
        // Short texts are cheaper to encode than to release and re-take the GIL.
        if s.len() >= 4096 {
            let tokenizer = self.get();
            let ids = without_gil(py, || {
                let ids = tokenizer.encode(s, &policy, add_special_tokens)?;
                check_python_room(ids.len(), IDS)?;
                Ok(ids)
            })
            .or_raise(py)?;
            return self.id_list(py, &ids);
        }
        SHORT_IDS.with(|cell| {
            // In use further up this thread's stack (a `__del__` run while a list was made):
            // a vector of its own.
            let (mut kept, mut own) = (cell.try_borrow_mut(), Vec::new());
            let ids = kept.as_deref_mut().unwrap_or(&mut own);
            // Two statements: a guard in the one with `or_raise` would be held while it runs
            // Python (the error's class), which may release the GIL.
            let encoded = self.read().encode_reusing(s, &policy, add_special_tokens, ids);
            encoded.or_raise(py)?;
            let list = self.id_list(py, ids);
            if ids.capacity() > SHORT_IDS_KEPT {
                *ids = Vec::new(); // padded to a long length once: not kept for ever
            }
            list
        })
    }

    /// ids and each token's (start, end) char offsets (Python str indices); special tokens
    /// are text inside the `protected` char ranges whatever the policy, but those named in
    /// `protected_allowed`.
    #[pyo3(signature = (text, add_special_tokens, policy, allowed = None, protected = Vec::new(), protected_allowed = None))]
    #[allow(clippy::too_many_arguments)]
    fn encode_with_offsets(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyString>,
        add_special_tokens: bool,
        policy: &str,
        allowed: Option<Vec<String>>,
        protected: Vec<(usize, usize)>,
        protected_allowed: Option<Vec<String>>,
    ) -> PyResult<(Vec<u32>, Vec<(usize, usize)>)> {
        let allowed_inside = match protected_allowed {
            Some(tokens) => Some(self.only_ids(py, tokens)?),
            None => None,
        };
        self.offsets(py, text, add_special_tokens, policy, allowed, protected, allowed_inside)
    }

    /// Chat data: the ids of `text` (no template tokens added; special tokens are text
    /// inside the `protected` char ranges, but those named in `protected_allowed`), and
    /// their labels: the id where its token overlaps one of the `regions` (char ranges; a
    /// token with no chars of its own counts where it stands), `ignore` elsewhere. One call
    /// instead of `encode_with_offsets` and a Python loop: a tuple per token's offsets and
    /// the loop over them were three quarters of `encode_chat`'s time (Qwen2.5 template).
    #[pyo3(signature = (text, policy, allowed, protected, protected_allowed, regions, ignore))]
    #[allow(clippy::too_many_arguments)]
    fn encode_labeled<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'_, PyString>,
        policy: &str,
        allowed: Option<Vec<String>>,
        protected: Vec<(usize, usize)>,
        protected_allowed: Option<&Bound<'py, PyAny>>,
        regions: Vec<(usize, usize)>,
        ignore: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let inside = match protected_allowed {
            Some(tokens) => Some(self.inside_ids(py, tokens)?),
            None => None,
        };
        let (ids, offsets) = self.offsets(py, text, false, policy, allowed, protected, inside)?;
        let labeled = crate::tokenizer::labeled_tokens(&offsets, regions);
        let lists = self.id_lists(py, &[&ids, &ids])?;
        let [ids, labels]: [Bound<'py, PyList>; 2] = lists.try_into().expect("two lists");
        for (k, _) in labeled.iter().enumerate().filter(|(_, &on)| !on) {
            labels.set_item(k, ignore)?;
        }
        Ok((ids, labels))
    }

    #[pyo3(signature = (texts, add_special_tokens, policy, allowed = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        add_special_tokens: bool,
        policy: &str,
        allowed: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let owned = self::texts(texts)?;
        let policy = self.policy(py, policy, allowed)?;
        let tokenizer = self.get();
        // Padding needs the batch's longest row before any list can be made.
        if !tokenizer.pads() {
            let lists = batch_chunks::encode_to_lists(py, &tokenizer, self.id_table(py), &owned, &policy, add_special_tokens)?;
            return PyList::new(py, lists);
        }
        let strs = owned.iter().map(text_ref).collect::<PyResult<Vec<&str>>>()?;
        let batch = without_gil(py, || {
            let batch = tokenizer.encode_batch(&strs, &policy, add_special_tokens)?;
            let ids = batch.iter().map(Vec::len).sum();
            check_python_room(ids, IDS)?;
            Ok(batch)
        })
        .or_raise(py)?;
        let rows = batch.iter().map(Vec::as_slice).collect::<Vec<_>>();
        PyList::new(py, self.id_lists(py, &rows)?)
    }

    /// The ids of all texts concatenated, and n + 1 offsets, as little-endian bytearrays
    /// (uint32 and int64) for numpy to view without copying.
    #[pyo3(signature = (texts, add_special_tokens, policy, allowed = None))]
    fn encode_batch_flat<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        add_special_tokens: bool,
        policy: &str,
        allowed: Option<Vec<String>>,
    ) -> PyResult<(Bound<'py, PyByteArray>, Bound<'py, PyByteArray>)> {
        let owned = self::texts(texts)?;
        let policy = self.policy(py, policy, allowed)?;
        let tokenizer = self.get();
        // The ids in a bytearray (`flat_ids`): written a chunk at a time while the chunks
        // after it are encoded (`batch_chunks`), or with padding, which needs the batch's
        // longest, once every text is.
        let (ids, offsets) = if tokenizer.pads() {
            let strs = owned.iter().map(text_ref).collect::<PyResult<Vec<&str>>>()?;
            let (rows, offsets) = without_gil(py, || {
                let rows = tokenizer.encode_batch(&strs, &policy, add_special_tokens)?;
                check_python_room(rows.iter().map(Vec::len).sum(), 4)?;
                let mut offsets = Vec::new();
                Error::reserve(&mut offsets, (rows.len() + 1) * 8, "the offsets of the batch")?;
                let mut at = 0i64;
                offsets.extend_from_slice(&at.to_le_bytes());
                for row in &rows {
                    at += row.len() as i64;
                    offsets.extend_from_slice(&at.to_le_bytes());
                }
                Ok::<_, Error>((rows, offsets))
            })
            .or_raise(py)?;
            let mut ids = FlatIds::with_room(py, rows.iter().map(Vec::len).sum())?;
            let room = ids.room();
            py.allow_threads(|| rows.into_iter().for_each(|row| room.push(row)));
            (ids.finish(py)?, offsets)
        } else {
            batch_chunks::encode_to_flat(py, &tokenizer, &owned, &policy, add_special_tokens, &self.flat_room)?
        };
        Ok((ids, PyByteArray::new(py, &offsets)))
    }

    fn decode(&self, py: Python<'_>, ids: &Bound<'_, PyAny>, skip_special_tokens: bool) -> PyResult<String> {
        let ids = ids_arg(ids)?;
        let tokenizer = self.get();
        without_gil(py, || {
            let text = tokenizer.decode(&ids, skip_special_tokens)?;
            check_python_room(text.len(), STR)?;
            Ok(text)
        })
        .or_raise(py)
    }

    /// Each id's bytes (tiktoken's `decode_tokens_bytes`); an unknown id is a `KeyError`.
    fn token_bytes<'py>(&self, py: Python<'py>, ids: &Bound<'_, PyAny>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let ids = ids_arg(ids)?;
        let tokenizer = self.byte_level(py)?;
        ids.iter()
            .map(|&id| match tokenizer.token_bytes(id) {
                Some(bytes) => Ok(PyBytes::new(py, &bytes)),
                None => Err(PyKeyError::new_err(id)),
            })
            .collect()
    }

    /// The bytes of `ids` (tiktoken's `decode_bytes`); an unknown id is a `KeyError`.
    fn decode_bytes<'py>(&self, py: Python<'py>, ids: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let ids = ids_arg(ids)?;
        let tokenizer = self.byte_level(py)?;
        let bytes = without_gil(py, || -> Result<Vec<u8>, u32> {
            let mut out = Vec::new();
            for &id in &ids {
                out.extend_from_slice(&tokenizer.token_bytes(id).ok_or(id)?);
            }
            Ok(out)
        });
        bytes.map(|b| PyBytes::new(py, &b)).map_err(PyKeyError::new_err)
    }

    /// The model's ids for one piece of raw bytes (tiktoken's `byte_pair_encode`).
    fn encode_piece<'py>(&self, py: Python<'py>, piece: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let tokenizer = self.byte_level(py)?;
        let ids = without_gil(py, || tokenizer.encode_piece(piece)).or_raise(py)?;
        self.id_list(py, &ids)
    }

    /// The last pre-tokenized piece of `text`, or `None`.
    #[pyo3(signature = (text, policy, allowed = None))]
    fn last_piece<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'_, PyString>,
        policy: &str,
        allowed: Option<Vec<String>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let s = &*self::text(text)?;
        let policy = self.policy(py, policy, allowed)?;
        let tokenizer = self.get();
        let piece = without_gil(py, || tokenizer.last_piece(s, &policy)).or_raise(py)?;
        Ok(piece.map(|p| PyBytes::new(py, &p)))
    }

    fn decode_batch(&self, py: Python<'_>, batch: &Bound<'_, PyAny>, skip_special_tokens: bool) -> PyResult<Vec<String>> {
        use rayon::prelude::*;
        let batch = sequence_arg(batch, ids_arg)?;
        let tokenizer = self.get();
        without_gil(py, || {
            let texts = batch.par_iter().map(|ids| tokenizer.decode(ids, skip_special_tokens)).collect::<crate::Result<Vec<_>>>()?;
            check_python_room(texts.iter().map(String::len).sum(), STR)?;
            Ok(texts)
        })
        .or_raise(py)
    }

    /// tokens: (content, single_word, lstrip, rstrip, normalized, special) tuples.
    fn add_tokens(
        &self,
        py: Python<'_>,
        tokens: Vec<(String, bool, bool, bool, bool, bool)>,
    ) -> PyResult<Vec<Option<u32>>> {
        let tokens = tokens
            .into_iter()
            .map(|(content, single_word, lstrip, rstrip, normalized, special)| AddedToken {
                content,
                single_word,
                lstrip,
                rstrip,
                normalized,
                special,
            })
            .collect();
        self.update(py, |tokenizer| tokenizer.add_tokens(tokens))
    }

    /// The `truncation` or `padding` settings as tokenizer.json spells them (JSON text; `None`
    /// when unset).
    fn settings(&self, key: &str) -> PyResult<Option<String>> {
        let tokenizer = self.get();
        let value = match key {
            "truncation" => tokenizer_json::truncation_to_value(&tokenizer.truncation),
            "padding" => tokenizer_json::padding_to_value(&tokenizer.padding, tokenizer.passthrough.get("padding")),
            _ => return Err(PyValueError::new_err(format!("unknown settings {key:?}"))),
        };
        Ok((!value.is_null()).then(|| value.to_string()))
    }

    /// Replaces the `truncation` or `padding` settings (tokenizer.json's JSON; `None` clears).
    #[pyo3(signature = (key, json))]
    fn set_settings(&self, py: Python<'_>, key: &str, json: Option<&str>) -> PyResult<()> {
        let value: serde_json::Value = match json {
            None => serde_json::Value::Null,
            Some(text) => serde_json::from_str(text).map_err(|e| PyValueError::new_err(e.to_string()))?,
        };
        if key != "truncation" && key != "padding" {
            return Err(PyValueError::new_err(format!("unknown settings {key:?}")));
        }
        self.update(py, |tokenizer| {
            if key == "truncation" {
                tokenizer.truncation = tokenizer_json::parse_truncation(&value)?;
            } else {
                tokenizer.padding = tokenizer_json::parse_padding(&value)?;
                tokenizer.passthrough.insert("padding".into(), value);
            }
            Ok(())
        })
    }

    /// An independent tokenizer sharing this one's (immutable) model: adding tokens to
    /// either does not affect the other.
    fn copy(&self) -> Self {
        Self::sharing(self.get())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.get().token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.get().id_to_token(id).map(str::to_string)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.get().vocab_size()
    }

    #[getter]
    fn id_limit(&self) -> usize {
        self.get().id_limit()
    }

    fn get_vocab<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let tokenizer = self.get();
        let vocab = PyDict::new(py);
        for (token, id) in &tokenizer.vocab.ids {
            vocab.set_item(token, id)?;
        }
        for (id, token) in tokenizer.added.tokens() {
            vocab.set_item(&token.content, id)?;
        }
        Ok(vocab)
    }

    /// (id, content, single_word, lstrip, rstrip, normalized, special) for each added token.
    fn added_tokens(&self) -> Vec<(u32, String, bool, bool, bool, bool, bool)> {
        self.get()
            .added
            .tokens()
            .map(|(id, t)| (id, t.content.clone(), t.single_word, t.lstrip, t.rstrip, t.normalized, t.special))
            .collect()
    }

    /// Bytes that identify the tokenizer as its tokenizer.json does, made fast
    /// (`tokenizer_json::fingerprint`).
    fn fingerprint<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let tokenizer = self.get();
        let bytes = without_gil(py, || tokenizer_json::fingerprint(&tokenizer));
        PyBytes::new(py, &bytes)
    }

    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        let tokenizer = self.get();
        without_gil(py, || tokenizer_json::to_string(&tokenizer)).or_raise(py)
    }

    /// Writes tokenizer.json to `path` through a temporary file in the same folder, renamed
    /// at the end: a failed write leaves no half-written file.
    fn save(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let tokenizer = self.get();
        without_gil(py, || -> crate::Result<()> {
            let json = tokenizer_json::to_string(&tokenizer)?;
            let io = |e: std::io::Error| Error::Io { path: path.into(), message: e.to_string() };
            let target = std::path::Path::new(path);
            let tmp = target.with_file_name(format!(
                ".{}.tmp-{}",
                target.file_name().and_then(|n| n.to_str()).unwrap_or("tokenizer.json"),
                std::process::id()
            ));
            let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, target));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(io)
        })
        .or_raise(py)
    }
}

/// The matrix at `address` (`len` elements of `dtype`: "float32", "float16", "bfloat16").
///
/// The Python wrapper (`tokensmith.embeddings`) passes the data pointer of a C-contiguous
/// numpy array or CPU tensor that it has checked (dtype, shape, writability) and keeps alive
/// for the call; the buffer protocol is not in Python 3.10's stable ABI.
fn with_matrix<R: Send>(
    py: Python<'_>,
    address: usize,
    len: usize,
    dtype: &str,
    f: impl FnOnce(&mut Matrix) -> crate::Result<R> + Send,
) -> PyResult<R> {
    if address == 0 && len > 0 {
        return Err(PyValueError::new_err("null data pointer"));
    }
    let dtype = dtype.to_string();
    without_gil(py, move || {
        // SAFETY: see above: `address` points at `len` live, exclusively borrowed elements.
        let mut matrix = unsafe {
            match dtype.as_str() {
                "float32" => Matrix::F32(std::slice::from_raw_parts_mut(address as *mut f32, len)),
                "float16" => Matrix::F16(std::slice::from_raw_parts_mut(address as *mut half::f16, len)),
                "bfloat16" => Matrix::Bf16(std::slice::from_raw_parts_mut(address as *mut half::bf16, len)),
                other => return Err(Error::Invalid(format!("unsupported dtype {other}"))),
            }
        };
        f(&mut matrix)
    })
    .or_raise(py)
}

/// Row flags as bytes (one per row, nonzero = included): a Python list of 150k bools
/// costs milliseconds to convert, bytes nothing.
fn flags(include: &[u8]) -> Vec<bool> {
    include.iter().map(|&b| b != 0).collect()
}

/// Mean of the rows whose flag is nonzero.
#[pyfunction]
fn embed_mean(py: Python<'_>, address: usize, len: usize, dtype: &str, cols: usize, include: &[u8]) -> PyResult<Vec<f64>> {
    let include = flags(include);
    with_matrix(py, address, len, dtype, |m| m.mean(cols, &include))
}

/// `draws` samples of N(mean, scale·Σ) over the included rows, seeded: f64 bytes, draws x cols.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn embed_mean_cov_samples<'py>(
    py: Python<'py>,
    address: usize,
    len: usize,
    dtype: &str,
    cols: usize,
    include: &[u8],
    draws: usize,
    seed: u64,
    scale: f64,
) -> PyResult<Bound<'py, PyBytes>> {
    let include = flags(include);
    let samples = with_matrix(py, address, len, dtype, |m| m.mean_cov_samples(cols, &include, draws, seed, scale))?;
    Ok(f64_bytes(py, &samples))
}

/// Mean of each group of rows: f64 bytes, groups x cols.
#[pyfunction]
fn embed_group_means<'py>(py: Python<'py>, address: usize, len: usize, dtype: &str, cols: usize, groups: Vec<Vec<usize>>) -> PyResult<Bound<'py, PyBytes>> {
    let means = with_matrix(py, address, len, dtype, |m| m.group_means(cols, &groups))?;
    Ok(f64_bytes(py, &means))
}

/// `values` (f64 bytes) plus N(0, std²) noise, seeded (the same on every platform).
#[pyfunction]
fn embed_add_noise<'py>(py: Python<'py>, values: &[u8], seed: u64, std: f64) -> PyResult<Bound<'py, PyBytes>> {
    let mut values = f64_values(values)?;
    add_noise(&mut values, seed, std);
    Ok(f64_bytes(py, &values))
}

/// Rows that are all zero.
#[pyfunction]
fn embed_zero_rows(py: Python<'_>, address: usize, len: usize, dtype: &str, cols: usize) -> PyResult<Vec<usize>> {
    with_matrix(py, address, len, dtype, |m| m.zero_rows(cols))
}

/// The noise `mean_cov_samples` draws for rows `start..stop`, as native-endian f64 bytes
/// laid out rows x streams: lets a CUDA tensor's rows be weighted by the same g as on the CPU.
#[pyfunction]
fn embed_counter_normals(py: Python<'_>, seed: u64, streams: usize, start: u64, stop: u64) -> Bound<'_, PyBytes> {
    let keys: Vec<u64> = (0..streams as u64).map(|k| stream_key(seed, k)).collect();
    let values: Vec<f64> = without_gil(py, || {
        (start..stop.max(start))
            .into_par_iter()
            .flat_map_iter(|r| keys.iter().map(move |&key| normal_at(key, r)))
            .collect()
    });
    f64_bytes(py, &values)
}

/// Writes the value rows (f64 bytes, rows x cols; rounded once to the dtype) into their rows, in place.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn embed_write_rows(py: Python<'_>, address: usize, len: usize, dtype: &str, cols: usize, rows: Vec<usize>, values: &[u8]) -> PyResult<()> {
    let values = f64_values(values)?;
    with_matrix(py, address, len, dtype, |m| m.write_rows(cols, &rows, &values))
}

/// Copies `len` bytes from `src` to `dst` (addresses of two disjoint buffers, `dst` freshly
/// allocated), moving whole memory pages where it can: see `pages::move_or_copy`. Returns
/// whether pages moved; `anonymous_ok`: whether `src` is an allocation the caller owns
/// alone, so that it may read as zeros afterwards. MemoryError: `dst` is unusable (free it),
/// `src` unchanged.
/// Rows of ints (a list of lists, as a `BatchEncoding` holds ids) as one flat little-endian
/// i64 buffer and i32 row offsets (n + 1), for Arrow, read as they are now. `None` when any row
/// is not a list of ints in i64 range (the caller converts those its own way): pyarrow reads a
/// Python int in about 100 ns, this in a few.
#[pyfunction]
fn flatten_int_rows<'py>(py: Python<'py>, rows: &Bound<'py, PyList>) -> PyResult<Option<(Bound<'py, PyByteArray>, Bound<'py, PyByteArray>)>> {
    let mut offsets: Vec<u8> = Vec::with_capacity((rows.len() + 1) * 4);
    offsets.extend_from_slice(&0i32.to_le_bytes());
    let mut values: Vec<u8> = Vec::new();
    let mut count: usize = 0;
    for row in rows.iter() {
        let Ok(row) = row.downcast::<PyList>() else { return Ok(None) };
        values.reserve(row.len() * 8);
        for item in row.iter() {
            // Exactly int (bool is an int, but pyarrow reads a row of bools as booleans).
            if !item.is_exact_instance_of::<pyo3::types::PyInt>() {
                return Ok(None);
            }
            let Ok(value) = item.extract::<i64>() else { return Ok(None) };
            values.extend_from_slice(&value.to_le_bytes());
        }
        count += row.len();
        let Ok(end) = i32::try_from(count) else { return Ok(None) };
        offsets.extend_from_slice(&end.to_le_bytes());
    }
    Ok(Some((PyByteArray::new(py, &values), PyByteArray::new(py, &offsets))))
}

/// `done[0]` is set to 1 once every byte is in `dst`, before returning: an interrupt that
/// Python raises right after the call can tell that the copy completed.
#[pyfunction]
fn move_or_copy_bytes(py: Python<'_>, src: usize, dst: usize, len: usize, anonymous_ok: bool, done: &Bound<'_, PyByteArray>) -> PyResult<bool> {
    if done.len() != 1 {
        return Err(PyValueError::new_err("done must be a bytearray of length 1"));
    }
    if len > 0 && (src == 0 || dst == 0) {
        return Err(PyValueError::new_err("null data pointer"));
    }
    if src < dst.saturating_add(len) && dst < src.saturating_add(len) {
        return Err(PyValueError::new_err("the two buffers overlap"));
    }
    // SAFETY: the caller (tokensmith.embeddings) passes two live tensors it owns exclusively.
    let moved = without_gil(
        py, || unsafe { crate::pages::move_or_copy(src as *mut u8, dst as *mut u8, len, anonymous_ok) })
        .map_err(|_| PyMemoryError::new_err("moving memory pages failed and the new buffer lost its pages"))?;
    // SAFETY: the GIL is held and the bytearray is not resized while this runs.
    unsafe { done.as_bytes_mut()[0] = 1 };
    Ok(moved)
}

fn f64_bytes<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    PyBytes::new(py, &bytes)
}

fn f64_values(bytes: &[u8]) -> PyResult<Vec<f64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(PyValueError::new_err("f64 values: the byte length is not a multiple of 8"));
    }
    Ok(bytes.chunks_exact(8).map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes"))).collect())
}

/// Whether the process may write every byte of `[address, address + len)` (see `pages::writable`).
#[pyfunction]
fn memory_writable(address: usize, len: usize) -> bool {
    crate::pages::writable(address, len)
}

/// A corpus's words and how often each occurs (`train::WordCounts`).
#[pyclass(module = "tokensmith._core", name = "WordCounts", frozen)]
struct PyWordCounts {
    inner: std::sync::Mutex<WordCounts>,
}

impl PyWordCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, WordCounts> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl PyWordCounts {
    /// `chunked`: count long words in chunks (a corpus to learn from, not a protected one).
    #[new]
    fn new(py: Python<'_>, tokenizer: &PyTokenizer, chunked: bool) -> PyResult<Self> {
        let counts = WordCounts::new(tokenizer.get(), chunked).or_raise(py)?;
        Ok(PyWordCounts { inner: std::sync::Mutex::new(counts) })
    }

    /// Counts the words of `texts`, on every core.
    fn add(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<()> {
        let owned = self::texts(texts)?;
        let strs = owned.iter().map(text_ref).collect::<PyResult<Vec<&str>>>()?;
        without_gil(py, || self.lock().add(&strs)).or_raise(py)
    }

    /// Distinct words.
    fn __len__(&self) -> usize {
        self.lock().counts.len()
    }

    /// Words counted, repeats included.
    #[getter]
    fn total(&self) -> u64 {
        self.lock().total
    }
}

/// New tokens for a tokenizer (`train::Trainer`).
#[pyclass(module = "tokensmith._core", name = "VocabTrainer", frozen)]
struct PyVocabTrainer {
    inner: std::sync::Mutex<Trainer>,
}

impl PyVocabTrainer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Trainer> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl PyVocabTrainer {
    #[new]
    fn new(py: Python<'_>, tokenizer: &PyTokenizer, protect: &PyWordCounts, partial_chars: bool) -> PyResult<Self> {
        let tokenizer = tokenizer.get();
        // Borrowed, not copied: a corpus's counts can be large.
        let protect = protect.lock();
        let mut trainer = without_gil(py, || Trainer::new(tokenizer, &protect)).or_raise(py)?;
        trainer.partial_chars = partial_chars;
        Ok(PyVocabTrainer { inner: std::sync::Mutex::new(trainer) })
    }

    /// ("added" | "exists", id, None) or ("refused", None, why).
    fn add_word(&self, py: Python<'_>, word: &str) -> PyResult<(&'static str, Option<u32>, Option<String>)> {
        Ok(match without_gil(py, || self.lock().add_word(word)).or_raise(py)? {
            WordOutcome::Added(id) => ("added", Some(id), None),
            WordOutcome::Exists(id) => ("exists", Some(id), None),
            WordOutcome::Refused(why) => ("refused", None, Some(why)),
        })
    }

    fn set_corpus(&self, py: Python<'_>, counts: &PyWordCounts) -> PyResult<()> {
        // Both locks taken and dropped with the GIL released: a lock held while taking the
        // GIL back would deadlock with a thread that holds the GIL and waits for it.
        without_gil(py, || self.lock().set_corpus(&counts.lock())).or_raise(py)
    }

    /// How many new tokens are characters the vocabulary lacked (SentencePiece-style).
    #[getter]
    fn new_chars(&self) -> usize {
        self.lock().new_chars()
    }

    /// Learns up to `limit` tokens from pairs seen `min_count` times or more; how many it learnt.
    fn train(&self, py: Python<'_>, limit: usize, min_count: u64) -> PyResult<usize> {
        without_gil(py, || self.lock().train(limit, min_count)).or_raise(py)
    }

    #[getter]
    fn first_id(&self) -> u32 {
        self.lock().first_id()
    }

    /// Whether tokens are bytes (byte-level BPE) rather than chars (SentencePiece-style).
    #[getter]
    fn byte_level(&self) -> bool {
        self.lock().byte_level()
    }

    /// How many tokens were made.
    fn __len__(&self) -> usize {
        self.lock().len()
    }

    /// The merges the new tokens bring, in rank order: (left, right, merged).
    fn merges(&self) -> Vec<(u32, u32, u32)> {
        self.lock().merges()
    }

    /// What a token stands for: its bytes (SentencePiece-style: its spelling).
    fn token_bytes<'py>(&self, py: Python<'py>, id: u32) -> Option<Bound<'py, PyBytes>> {
        self.lock().token_bytes(id).map(|b| PyBytes::new(py, b))
    }

    /// The old tokenizer's ids for what token `id` stands for.
    fn old_ids(&self, py: Python<'_>, id: u32) -> PyResult<Vec<u32>> {
        let trainer = self.lock();
        let bytes = trainer.token_bytes(id).ok_or_else(|| PyValueError::new_err(format!("no token {id}")))?.to_vec();
        trainer.old_ids(&bytes).or_raise(py)
    }

    /// The new tokens that `tokenizer` (from `tokenizer()`) does not produce from their text.
    fn unreachable(&self, py: Python<'_>, tokenizer: &PyTokenizer) -> PyResult<Vec<u32>> {
        let new = tokenizer.get();
        without_gil(py, || self.lock().unreachable(&new)).or_raise(py)
    }

    /// Candidates skipped, by reason.
    fn skipped(&self) -> Vec<(&'static str, usize)> {
        let counts = self.lock().skipped();
        Skip::ALL.iter().map(|s| (s.name(), counts.get(s).copied().unwrap_or(0))).collect()
    }

    /// The extended tokenizer.
    fn tokenizer(&self, py: Python<'_>) -> PyResult<PyTokenizer> {
        without_gil(py, || self.lock().tokenizer()).or_raise(py).map(PyTokenizer::new)
    }
}

/// A SentencePiece `.model` with `pieces` appended, scored below every old piece.
#[pyfunction]
fn sentencepiece_append_pieces<'py>(
    py: Python<'py>,
    model: &[u8],
    pieces: Vec<String>,
    first_id: u32,
    source: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = sentencepiece::append_pieces(model, &pieces, first_id, source).or_raise(py)?;
    Ok(PyBytes::new(py, &bytes))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyWordCounts>()?;
    m.add_class::<PyVocabTrainer>()?;
    m.add_function(wrap_pyfunction!(memory_writable, m)?)?;
    m.add_function(wrap_pyfunction!(sentencepiece_append_pieces, m)?)?;
    m.add_function(wrap_pyfunction!(embed_mean, m)?)?;
    m.add_function(wrap_pyfunction!(embed_mean_cov_samples, m)?)?;
    m.add_function(wrap_pyfunction!(embed_group_means, m)?)?;
    m.add_function(wrap_pyfunction!(embed_add_noise, m)?)?;
    m.add_function(wrap_pyfunction!(embed_zero_rows, m)?)?;
    m.add_function(wrap_pyfunction!(embed_counter_normals, m)?)?;
    m.add_function(wrap_pyfunction!(embed_write_rows, m)?)?;
    m.add_function(wrap_pyfunction!(move_or_copy_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(flatten_int_rows, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
