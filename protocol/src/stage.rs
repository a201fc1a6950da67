//! The stage protocol (`/hearth/stage/1`): one model split over several nodes as a pipeline of
//! layer ranges. The node that runs the last stage drives the reply: it opens a stream to the
//! first stage with [`StageOpen`]; each stage loads its layers and opens a stream to the next
//! one, and the stage before the last opens one back to the driver, which closes the ring.
//! Tokens then go from the driver to the first stage, hidden states straight from each stage to
//! the next, and the driver samples the next token from the last stage's logits. Errors travel
//! both ways along the ring, naming the stage that was lost, so the requester can re-plan
//! without it. Every frame is checked against the session's shape before it is used.

use serde::{Deserialize, Serialize};

use crate::frame::MAX_FRAME;

/// One stage of a split: the node (peer id, as text) and the layers `start..end` it runs. The
/// first stage also holds the token embedding; the last one the output head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePlan {
    pub peer: String,
    pub start: u32,
    pub end: u32,
}

/// How hidden states travel between stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireDtype {
    /// Exact: the split reply is identical to the single-node reply.
    #[default]
    F32,
    /// Half the bytes; replies may differ from the single-node reply in near-ties.
    F16,
}

impl WireDtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            WireDtype::F32 => 4,
            WireDtype::F16 => 2,
        }
    }

    /// Its name in requests and logs.
    pub fn name(self) -> &'static str {
        match self {
            WireDtype::F32 => "f32",
            WireDtype::F16 => "f16",
        }
    }
}

/// A split as a job carries it: the stages in order (the last is the node the job is sent to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub stages: Vec<StagePlan>,
    pub wire: WireDtype,
}

impl Split {
    /// Checks the stages cover `0..layers` in order, at least two of them, each non-empty.
    pub fn check(&self, layers: u32) -> Result<(), String> {
        if self.stages.len() < 2 {
            return Err(format!(
                "a split needs at least two stages, not {}",
                self.stages.len()
            ));
        }
        let mut next = 0;
        for s in &self.stages {
            if s.start != next || s.end <= s.start {
                return Err(format!(
                    "stage layers {}..{} do not continue from layer {next}",
                    s.start, s.end
                ));
            }
            next = s.end;
        }
        if next != layers {
            return Err(format!(
                "the stages end at layer {next} but the model has {layers}"
            ));
        }
        Ok(())
    }
}

/// The first frame on a stage stream: which session, model and stage the receiver is asked to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOpen {
    pub version: u32,
    /// Chosen by the driver; names the session on every stage.
    pub session: u64,
    /// The model's full SHA-256 digest.
    pub model: String,
    pub split: Split,
    /// Which stage of `split` the receiver is.
    pub index: u32,
    /// Positions each stage's cache must hold.
    pub context: u32,
}

/// Frames on a stage stream after [`StageFrame::Open`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StageFrame {
    Open(StageOpen),
    /// Token ids at positions `pos..`, for the first stage. `last` marks the end of a step: the
    /// driver needs logits after it.
    Tokens {
        session: u64,
        pos: u32,
        ids: Vec<u32>,
        last: bool,
    },
    /// `rows × dim` hidden states at positions `pos..`, little-endian in `dtype`.
    Hidden {
        session: u64,
        pos: u32,
        rows: u32,
        dim: u32,
        dtype: WireDtype,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        last: bool,
    },
    /// The answer to `Open`: this stage and every one after it are loaded and connected.
    Ready {
        session: u64,
    },
    /// The session is over; pass it on and free it.
    Close {
        session: u64,
    },
    /// The session failed; `lost` names the stage's node that went away, if that is why.
    Error {
        session: u64,
        lost: Option<String>,
        message: String,
    },
}

/// Most rows of hidden states one frame carries at `dim` values per row.
pub fn max_rows(dim: usize, dtype: WireDtype) -> usize {
    // Room for the frame's other fields.
    ((MAX_FRAME - 64) / (dim.max(1) * dtype.size())).max(1)
}

/// What a session expects of the frames it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub session: u64,
    /// Takes token ids (the first stage), or hidden states of this width.
    pub input: Input,
    pub dtype: WireDtype,
    /// Positions the session has run so far; a frame must continue from there.
    pub pos: u32,
    pub context: u32,
    pub vocab: u32,
}

/// What a stage takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Tokens,
    Hidden { dim: u32 },
}

impl Expect {
    /// Checks a data frame fits the session: its session, kind, shape, dtype, positions and
    /// sizes. Returns the number of rows it carries.
    pub fn check(&self, frame: &StageFrame) -> Result<usize, String> {
        let (session, pos, rows) = match (frame, self.input) {
            (
                StageFrame::Tokens {
                    session, pos, ids, ..
                },
                Input::Tokens,
            ) => {
                if let Some(bad) = ids.iter().find(|&&t| t >= self.vocab) {
                    return Err(format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.vocab
                    ));
                }
                (*session, *pos, ids.len())
            }
            (
                StageFrame::Hidden {
                    session,
                    pos,
                    rows,
                    dim,
                    dtype,
                    data,
                    ..
                },
                Input::Hidden { dim: want },
            ) => {
                if *dim != want {
                    return Err(format!("hidden states {dim} wide; this stage takes {want}"));
                }
                if *dtype != self.dtype {
                    return Err(format!(
                        "hidden states in {}; this session sends {}",
                        dtype.name(),
                        self.dtype.name()
                    ));
                }
                let want_bytes = (*rows as usize) * (*dim as usize) * dtype.size();
                if data.len() != want_bytes {
                    return Err(format!(
                        "{} bytes for {rows} rows of {dim} {}; expected {want_bytes}",
                        data.len(),
                        dtype.name()
                    ));
                }
                (*session, *pos, *rows as usize)
            }
            (StageFrame::Tokens { .. }, Input::Hidden { .. }) => {
                return Err("token ids sent to a stage that takes hidden states".into())
            }
            (StageFrame::Hidden { .. }, Input::Tokens) => {
                return Err("hidden states sent to the first stage, which takes token ids".into())
            }
            (other, _) => return Err(format!("{} is not a data frame", other.kind())),
        };
        if session != self.session {
            return Err(format!(
                "frame for session {session:x} on session {:x}",
                self.session
            ));
        }
        if rows == 0 {
            return Err("a frame with no rows".into());
        }
        if pos != self.pos {
            return Err(format!(
                "frame at position {pos}; the session is at {}",
                self.pos
            ));
        }
        if self.pos as usize + rows > self.context as usize {
            return Err(format!(
                "{} positions do not fit the session's context of {}",
                self.pos as usize + rows,
                self.context
            ));
        }
        Ok(rows)
    }
}

impl StageFrame {
    /// The frame's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            StageFrame::Open(_) => "open",
            StageFrame::Ready { .. } => "ready",
            StageFrame::Tokens { .. } => "tokens",
            StageFrame::Hidden { .. } => "hidden",
            StageFrame::Close { .. } => "close",
            StageFrame::Error { .. } => "error",
        }
    }
}

/// Encodes rows of f32 values in `dtype`, little-endian.
pub fn encode_rows(values: &[f32], dtype: WireDtype) -> Vec<u8> {
    match dtype {
        WireDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WireDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// Decodes what [`encode_rows`] made into `out` (replacing its contents).
pub fn decode_rows(data: &[u8], dtype: WireDtype, out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        WireDtype::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        WireDtype::F16 => out.extend(
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode};

    fn expect(input: Input) -> Expect {
        Expect {
            session: 7,
            input,
            dtype: WireDtype::F32,
            pos: 3,
            context: 16,
            vocab: 100,
        }
    }

    fn hidden(rows: u32, dim: u32, bytes: usize) -> StageFrame {
        StageFrame::Hidden {
            session: 7,
            pos: 3,
            rows,
            dim,
            dtype: WireDtype::F32,
            data: vec![0; bytes],
            last: true,
        }
    }

    #[test]
    fn frames_of_the_right_shape_pass_and_every_wrong_one_says_why() {
        let h = expect(Input::Hidden { dim: 4 });
        assert_eq!(h.check(&hidden(2, 4, 32)), Ok(2));
        let why = |e: &Expect, f: StageFrame| e.check(&f).unwrap_err();
        assert!(why(&h, hidden(2, 5, 40)).contains("5 wide"));
        assert!(why(&h, hidden(2, 4, 31)).contains("expected 32"));
        assert!(why(&h, hidden(0, 4, 0)).contains("no rows"));
        assert!(why(&h, hidden(14, 4, 14 * 16)).contains("context"));
        let mut f16 = hidden(2, 4, 16);
        if let StageFrame::Hidden { dtype, .. } = &mut f16 {
            *dtype = WireDtype::F16;
        }
        assert!(why(&h, f16).contains("f16"));
        let mut other = hidden(2, 4, 32);
        if let StageFrame::Hidden { session, .. } = &mut other {
            *session = 8;
        }
        assert!(why(&h, other).contains("session"));
        let tokens = |pos, ids: Vec<u32>| StageFrame::Tokens {
            session: 7,
            pos,
            ids,
            last: true,
        };
        assert!(why(&h, tokens(3, vec![1])).contains("takes hidden"));
        let t = expect(Input::Tokens);
        assert_eq!(t.check(&tokens(3, vec![1, 2])), Ok(2));
        assert!(why(&t, tokens(3, vec![100])).contains("vocabulary"));
        assert!(why(&t, tokens(4, vec![1])).contains("position"));
        assert!(why(&t, hidden(2, 4, 32)).contains("first stage"));
        assert!(why(&t, StageFrame::Close { session: 7 }).contains("close"));
    }

    #[test]
    fn splits_must_cover_every_layer_in_order() {
        let stage = |start, end| StagePlan {
            peer: "p".into(),
            start,
            end,
        };
        let split = |stages| Split {
            stages,
            wire: WireDtype::F32,
        };
        assert_eq!(split(vec![stage(0, 10), stage(10, 30)]).check(30), Ok(()));
        assert!(split(vec![stage(0, 30)]).check(30).is_err());
        assert!(split(vec![stage(0, 10), stage(11, 30)]).check(30).is_err());
        assert!(split(vec![stage(0, 10), stage(10, 10), stage(10, 30)])
            .check(30)
            .is_err());
        assert!(split(vec![stage(0, 10), stage(10, 20)]).check(30).is_err());
    }

    #[test]
    fn the_largest_hidden_frame_fits_the_frame_limit_and_rows_round_trip() {
        for (dim, dtype) in [
            (576, WireDtype::F32),
            (640, WireDtype::F16),
            (8192, WireDtype::F32),
        ] {
            let rows = max_rows(dim, dtype);
            let values: Vec<f32> = (0..rows * dim).map(|i| i as f32 * 0.25).collect();
            let frame = StageFrame::Hidden {
                session: u64::MAX,
                pos: u32::MAX,
                rows: rows as u32,
                dim: dim as u32,
                dtype,
                data: encode_rows(&values, dtype),
                last: false,
            };
            let bytes = encode(&frame).expect("fits one frame");
            let back: StageFrame = decode(&bytes[crate::frame::HEADER..]).unwrap();
            let StageFrame::Hidden { data, .. } = back else {
                panic!()
            };
            let mut out = Vec::new();
            decode_rows(&data, dtype, &mut out);
            assert_eq!(out.len(), values.len());
            // Multiples of 0.25 below 2048 are exact in f16 too.
            assert_eq!(out[..100], values[..100]);
        }
    }
}
