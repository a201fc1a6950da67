//! hearth's wire format. The mesh issue fills this crate with message types, framing and limits;
//! for now it holds the protocol version every node will announce.

/// Version of the hearth protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
