//! GGUF reader: header, metadata and tensor directory parsed from a memory map. Tensor bytes are
//! never copied; a stage touches only the pages of the tensors it uses.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays deeper than this are refused (real files use depth 1).
const MAX_ARRAY_DEPTH: usize = 4;
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost (row length).
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub len: usize,
}

/// The bytes of a GGUF file: a read-only memory map, or an owned buffer (tests, fuzzing).
pub enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Tells the OS that bytes `offset..offset + len` will not be read soon: their file pages may
    /// leave this process's memory (a later read brings them back).
    pub fn release(&self, offset: usize, len: usize) {
        if let Storage::Mapped(m) = self {
            // SAFETY: the map is read-only and file-backed, so dropped pages read back unchanged.
            // Failure only means the pages stay resident.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
    }
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub tensor_order: Vec<String>,
    pub bytes: Arc<Storage>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |error| Error::Io {
            path: path.to_owned(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; hearth's model cache never rewrites a file in place
        // (imports go to a temp file and are renamed), so the bytes do not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_owned(), Storage::Mapped(map))
    }

    /// Parses GGUF bytes already in memory.
    pub fn parse(path: PathBuf, storage: Storage) -> Result<Self> {
        let bytes = Arc::new(storage);
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        let not_gguf = |reason: String| Error::NotGguf {
            path: path.clone(),
            reason,
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            reason,
        };

        if r.buf.len() < 4 || &r.buf[..4] != MAGIC {
            return Err(not_gguf(
                "it does not start with the GGUF magic bytes".into(),
            ));
        }
        r.pos = 4;
        let version = r.u32().map_err(corrupt)?;
        if !(2..=3).contains(&version) {
            return Err(not_gguf(format!(
                "GGUF version {version}; hearth reads versions 2 and 3"
            )));
        }
        let tensor_count = r.u64().map_err(corrupt)?;
        let kv_count = r.u64().map_err(corrupt)?;
        // Each entry takes at least 8 bytes, so counts beyond the file size are lies.
        let limit = r.buf.len() as u64 / 8;
        if tensor_count > limit || kv_count > limit {
            return Err(corrupt(format!(
                "header claims {tensor_count} tensors and {kv_count} metadata entries"
            )));
        }
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = r.string().map_err(corrupt)?;
            let ty = r.u32().map_err(corrupt)?;
            let value = r
                .value(ty, 0)
                .map_err(|e| corrupt(format!("metadata `{key}`: {e}")))?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string().map_err(corrupt)?;
            let n_dims = r.u32().map_err(corrupt)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(corrupt(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64().map_err(corrupt)?);
            }
            let raw_ty = r.u32().map_err(corrupt)?;
            let offset = r.u64().map_err(corrupt)?;
            infos.push((name, dims, raw_ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a >= 8 => a,
                _ => return Err(corrupt(format!("general.alignment is {v:?}"))),
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = r.buf.len() as u64;
        let mut tensors = HashMap::with_capacity(infos.len());
        let mut tensor_order = Vec::with_capacity(infos.len());
        for (name, dims, raw_ty, offset) in infos {
            let ty = GgmlType::from_raw(raw_ty).ok_or_else(|| Error::UnsupportedTensorType {
                name: name.clone(),
                ty: format!("ggml type {raw_ty}"),
                supported: GgmlType::supported_list(),
            })?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0 && n <= file_len * 8)
                .ok_or_else(|| corrupt(format!("tensor {name} has dimensions {dims:?}")))?;
            if dims[0] % ty.block_size() as u64 != 0 {
                return Err(corrupt(format!(
                    "tensor {name}: row length {} is not a multiple of the {ty} block size",
                    dims[0]
                )));
            }
            let len = elements / ty.block_size() as u64 * ty.type_size() as u64;
            let start = data_start
                .checked_add(offset)
                .filter(|s| s % alignment == 0);
            let end = start.and_then(|s| s.checked_add(len));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(corrupt(format!("tensor {name} has offset {offset}")));
            };
            if end > file_len {
                return Err(corrupt(format!(
                    "tensor {name} ends at byte {end} but the file has {file_len} bytes (truncated?)"
                )));
            }
            let info = TensorInfo {
                name: name.clone(),
                dims: dims.iter().map(|&d| d as usize).collect(),
                ty,
                offset: start as usize,
                len: len as usize,
            };
            tensor_order.push(name.clone());
            if tensors.insert(name.clone(), info).is_some() {
                return Err(corrupt(format!("tensor {name} appears twice")));
            }
        }
        Ok(Gguf {
            path,
            version,
            metadata,
            tensors,
            tensor_order,
            bytes,
        })
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| Error::MissingMetadata(key.to_owned()))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => Err(bad(key, format!("expected a string, found {other:?}"))),
        }
    }

    /// An unsigned integer metadata value.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad(key, format!("expected an unsigned integer, found {v:?}")))
    }

    /// A float metadata value.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.get(key)?;
        v.as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| bad(key, format!("expected a number, found {v:?}")))
    }

    /// An array metadata value.
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            other => Err(bad(key, format!("expected an array, found {other:?}"))),
        }
    }

    /// The tensor directory entry for `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_owned()))
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.offset..info.offset + info.len]
    }
}

fn bad(key: &str, reason: String) -> Error {
    Error::BadMetadata {
        key: key.to_owned(),
        reason,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "unexpected end of file at byte {} (truncated?)",
                self.pos
            ));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| format!("string length {len}"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err("arrays nested too deeply".into());
                }
                let item_ty = self.u32()?;
                let len = self.u64()?;
                // Every item takes at least one byte: a longer array cannot fit in the file.
                if len > (self.buf.len() - self.pos) as u64 {
                    return Err(format!("array of {len} items is longer than the file"));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }
}
