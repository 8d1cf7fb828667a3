//! The TFTP packet codec (RFC 1350, option extension RFC 2347): bytes in, typed packets out, and
//! back. Pure: no I/O, no allocation proportional to anything but the packet itself.

use std::fmt;

/// Opcodes on the wire.
pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// A request carrying more options than this is refused: real clients send at most a handful
/// (blksize, tsize, timeout, windowsize), and the bound keeps a hostile request cheap.
pub const MAX_OPTIONS: usize = 16;
/// Longest filename, mode, option name or option value accepted, in bytes. PXE ROMs carry at
/// most 127 bytes of boot file name, so this leaves room for long paths without letting a
/// request make us hold large strings.
pub const MAX_FIELD_LEN: usize = 512;

/// TFTP error codes (RFC 1350 section 5, RFC 2347 for 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTransferId,
    FileExists,
    NoSuchUser,
    OptionsRefused,
    /// A code outside 0..=8, kept so a peer's ERROR packet is still parsed and logged.
    Other(u16),
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionsRefused => 8,
            ErrorCode::Other(code) => code,
        }
    }

    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionsRefused,
            other => ErrorCode::Other(other),
        }
    }
}

/// Transfer mode of a request. `mail` is obsolete (RFC 1350 says so) and parsed only to be refused
/// with a clear message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
    Mail,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }
}

/// One option of a request or OACK, as sent (names compared case-insensitively later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOption {
    pub name: String,
    pub value: String,
}

/// A read or write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    pub options: Vec<RawOption>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: String },
    Oack { options: Vec<RawOption> },
}

/// Why a datagram is not a TFTP packet we accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error(
        "packet of {len} bytes is too short to be TFTP (at least {min} needed for opcode {opcode})"
    )]
    TooShort { len: usize, min: usize, opcode: u16 },
    #[error("unknown opcode {0} (TFTP has 1 RRQ, 2 WRQ, 3 DATA, 4 ACK, 5 ERROR, 6 OACK)")]
    UnknownOpcode(u16),
    #[error("the {field} field is not terminated by a NUL byte")]
    MissingNul { field: &'static str },
    #[error("the {field} field is empty")]
    EmptyField { field: &'static str },
    #[error("the {field} field is longer than {max} bytes")]
    FieldTooLong { field: &'static str, max: usize },
    #[error("the {field} field is not valid text (ASCII/UTF-8 without control characters)")]
    NotText { field: &'static str },
    #[error("unknown transfer mode {0:?}: use octet (binary) or netascii")]
    UnknownMode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("more than {max} options")]
    TooManyOptions { max: usize },
    #[error("{len} bytes of data exceed the largest TFTP block (65464)")]
    DataTooLarge { len: usize },
    #[error("{0} trailing bytes after the packet")]
    TrailingBytes(usize),
}

fn opcode_min_len(opcode: u16) -> usize {
    match opcode {
        // opcode + at least "x\0octet\0"-ish; the field parser reports what exactly is missing.
        OP_RRQ | OP_WRQ => 4,
        OP_DATA | OP_ACK => 4,
        OP_ERROR => 5,
        _ => 2,
    }
}

/// Splits NUL-terminated fields off the front of `rest`.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next_raw(&mut self, field: &'static str) -> Result<&'a [u8], PacketError> {
        let Some(nul) = self.rest.iter().position(|&b| b == 0) else {
            return Err(PacketError::MissingNul { field });
        };
        let (value, rest) = self.rest.split_at(nul);
        self.rest = &rest[1..];
        if value.len() > MAX_FIELD_LEN {
            return Err(PacketError::FieldTooLong {
                field,
                max: MAX_FIELD_LEN,
            });
        }
        Ok(value)
    }

    fn next_text(&mut self, field: &'static str) -> Result<String, PacketError> {
        let raw = self.next_raw(field)?;
        text(raw, field)
    }
}

fn text(raw: &[u8], field: &'static str) -> Result<String, PacketError> {
    let s = std::str::from_utf8(raw).map_err(|_| PacketError::NotText { field })?;
    if s.chars().any(char::is_control) {
        return Err(PacketError::NotText { field });
    }
    Ok(s.to_string())
}

fn parse_options(fields: &mut Fields<'_>) -> Result<Vec<RawOption>, PacketError> {
    let mut options = Vec::new();
    while !fields.rest.is_empty() {
        // Some clients pad requests with NULs after the last option; tolerate that padding
        // rather than calling it an empty option name.
        if fields.rest.iter().all(|&b| b == 0) {
            break;
        }
        if options.len() == MAX_OPTIONS {
            return Err(PacketError::TooManyOptions { max: MAX_OPTIONS });
        }
        let name = fields.next_text("option name")?;
        if name.is_empty() {
            return Err(PacketError::EmptyField {
                field: "option name",
            });
        }
        if fields.rest.is_empty() {
            return Err(PacketError::OptionWithoutValue(name));
        }
        let value = fields.next_text("option value")?;
        options.push(RawOption { name, value });
    }
    Ok(options)
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let mut fields = Fields { rest: body };
    let filename = fields.next_text("filename")?;
    if filename.is_empty() {
        return Err(PacketError::EmptyField { field: "filename" });
    }
    let mode_text = fields.next_text("mode")?;
    let mode = match mode_text.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        "mail" => Mode::Mail,
        _ => return Err(PacketError::UnknownMode(mode_text)),
    };
    let options = parse_options(&mut fields)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<Packet<'_>, PacketError> {
    if datagram.len() < 2 {
        return Err(PacketError::TooShort {
            len: datagram.len(),
            min: 2,
            opcode: 0,
        });
    }
    let opcode = u16::from_be_bytes([datagram[0], datagram[1]]);
    if !(OP_RRQ..=OP_OACK).contains(&opcode) {
        return Err(PacketError::UnknownOpcode(opcode));
    }
    let min = opcode_min_len(opcode);
    if datagram.len() < min {
        return Err(PacketError::TooShort {
            len: datagram.len(),
            min,
            opcode,
        });
    }
    let body = &datagram[2..];
    match opcode {
        OP_RRQ => parse_request(body).map(Packet::Rrq),
        OP_WRQ => parse_request(body).map(Packet::Wrq),
        OP_DATA => {
            let block = u16::from_be_bytes([body[0], body[1]]);
            let data = &body[2..];
            if data.len() > MAX_BLKSIZE as usize {
                return Err(PacketError::DataTooLarge { len: data.len() });
            }
            Ok(Packet::Data { block, data })
        }
        OP_ACK => {
            let block = u16::from_be_bytes([body[0], body[1]]);
            if body.len() > 2 {
                return Err(PacketError::TrailingBytes(body.len() - 2));
            }
            Ok(Packet::Ack { block })
        }
        OP_ERROR => {
            let code = ErrorCode::from_u16(u16::from_be_bytes([body[0], body[1]]));
            let mut fields = Fields { rest: &body[2..] };
            // A peer's error text is only logged; replace what is not printable instead of
            // dropping the whole packet, so a sloppy client's abort is still honoured. The
            // replacement is '?' rather than U+FFFD (3 bytes), so the text never grows past
            // the bound the raw field was checked against (found by the fuzz target).
            let raw = fields.next_raw("error message")?;
            let message: String = String::from_utf8_lossy(raw)
                .chars()
                .map(|c| {
                    if c.is_control() || c == char::REPLACEMENT_CHARACTER {
                        '?'
                    } else {
                        c
                    }
                })
                .collect();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => {
            let mut fields = Fields { rest: body };
            let options = parse_options(&mut fields)?;
            Ok(Packet::Oack { options })
        }
        _ => Err(PacketError::UnknownOpcode(opcode)),
    }
}

/// Smallest and largest block sizes RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;

/// Appends a DATA packet to `out` (cleared first).
pub fn encode_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.clear();
    out.reserve(4 + data.len());
    out.extend_from_slice(&data_header(block));
    out.extend_from_slice(data);
}

/// The four bytes that start a DATA packet.
pub fn data_header(block: u16) -> [u8; 4] {
    let op = OP_DATA.to_be_bytes();
    let b = block.to_be_bytes();
    [op[0], op[1], b[0], b[1]]
}

pub fn encode_ack(block: u16) -> [u8; 4] {
    let op = OP_ACK.to_be_bytes();
    let b = block.to_be_bytes();
    [op[0], op[1], b[0], b[1]]
}

/// An ERROR packet. Messages are ours (never client input echoed back), so they stay short.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.as_u16().to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

fn encode_request(opcode: u16, req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&opcode.to_be_bytes());
    push_field(&mut out, &req.filename);
    push_field(&mut out, req.mode.as_str());
    for opt in &req.options {
        push_field(&mut out, &opt.name);
        push_field(&mut out, &opt.value);
    }
    out
}

pub fn encode_rrq(req: &Request) -> Vec<u8> {
    encode_request(OP_RRQ, req)
}

pub fn encode_wrq(req: &Request) -> Vec<u8> {
    encode_request(OP_WRQ, req)
}

pub fn encode_oack(options: &[RawOption]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&OP_OACK.to_be_bytes());
    for opt in options {
        push_field(&mut out, &opt.name);
        push_field(&mut out, &opt.value);
    }
    out
}

fn push_field(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// Encodes any packet (used by tests and by clients built on this codec).
pub fn encode(packet: &Packet<'_>) -> Vec<u8> {
    match packet {
        Packet::Rrq(req) => encode_rrq(req),
        Packet::Wrq(req) => encode_wrq(req),
        Packet::Data { block, data } => {
            let mut out = Vec::new();
            encode_data(&mut out, *block, data);
            out
        }
        Packet::Ack { block } => encode_ack(*block).to_vec(),
        Packet::Error { code, message } => encode_error(*code, message),
        Packet::Oack { options } => encode_oack(options),
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(name: &str, value: &str) -> RawOption {
        RawOption {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn rrq_with_options_round_trips() {
        let req = Request {
            filename: "boot/x64/ipxe.efi".into(),
            mode: Mode::Octet,
            options: vec![
                opt("blksize", "1468"),
                opt("tsize", "0"),
                opt("windowsize", "16"),
            ],
        };
        let bytes = encode_rrq(&req);
        assert_eq!(parse(&bytes), Ok(Packet::Rrq(req.clone())));
        let bytes = encode_wrq(&req);
        assert_eq!(parse(&bytes), Ok(Packet::Wrq(req)));
    }

    #[test]
    fn rrq_wire_shape_matches_rfc1350() {
        let bytes = b"\x00\x01pxelinux.0\x00octet\x00";
        assert_eq!(
            parse(bytes),
            Ok(Packet::Rrq(Request {
                filename: "pxelinux.0".into(),
                mode: Mode::Octet,
                options: vec![],
            }))
        );
    }

    #[test]
    fn mode_is_case_insensitive() {
        let p = parse(b"\x00\x01f\x00NetASCII\x00").unwrap();
        assert!(matches!(
            p,
            Packet::Rrq(Request {
                mode: Mode::Netascii,
                ..
            })
        ));
        let p = parse(b"\x00\x01f\x00OCTET\x00").unwrap();
        assert!(matches!(
            p,
            Packet::Rrq(Request {
                mode: Mode::Octet,
                ..
            })
        ));
        let p = parse(b"\x00\x01f\x00mail\x00").unwrap();
        assert!(matches!(
            p,
            Packet::Rrq(Request {
                mode: Mode::Mail,
                ..
            })
        ));
    }

    #[test]
    fn trailing_nul_padding_after_options_is_tolerated() {
        let p = parse(b"\x00\x01f\x00octet\x00blksize\x001024\x00\x00\x00").unwrap();
        let Packet::Rrq(req) = p else { panic!() };
        assert_eq!(req.options, vec![opt("blksize", "1024")]);
    }

    #[test]
    fn data_ack_error_oack_round_trip() {
        let data = [7u8; 1468];
        for p in [
            Packet::Data {
                block: 65535,
                data: &data,
            },
            Packet::Data {
                block: 0,
                data: &[],
            },
            Packet::Ack { block: 0 },
            Packet::Ack { block: 40000 },
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "no such file".into(),
            },
            Packet::Error {
                code: ErrorCode::Other(99),
                message: String::new(),
            },
            Packet::Oack {
                options: vec![opt("blksize", "1468"), opt("tsize", "123")],
            },
            Packet::Oack { options: vec![] },
        ] {
            assert_eq!(parse(&encode(&p)), Ok(p.clone()), "{p:?}");
        }
    }

    #[test]
    fn error_codes_round_trip() {
        for code in 0..=20u16 {
            assert_eq!(ErrorCode::from_u16(code).as_u16(), code);
        }
    }

    #[test]
    fn truncated_packets_are_typed_errors() {
        assert!(matches!(parse(b""), Err(PacketError::TooShort { .. })));
        assert!(matches!(parse(b"\x00"), Err(PacketError::TooShort { .. })));
        assert!(matches!(
            parse(b"\x00\x04\x00"),
            Err(PacketError::TooShort { .. })
        ));
        assert!(matches!(
            parse(b"\x00\x03\x00"),
            Err(PacketError::TooShort { .. })
        ));
        assert!(matches!(
            parse(b"\x00\x05\x00\x01"),
            Err(PacketError::TooShort { .. })
        ));
        assert!(matches!(
            parse(b"\x00\x05\x00\x01abc"),
            Err(PacketError::MissingNul {
                field: "error message"
            })
        ));
        assert!(matches!(
            parse(b"\x00\x01file"),
            Err(PacketError::MissingNul { field: "filename" })
        ));
        assert!(matches!(
            parse(b"\x00\x01file\x00octet"),
            Err(PacketError::MissingNul { field: "mode" })
        ));
        assert!(matches!(
            parse(b"\x00\x01file\x00octet\x00blksize"),
            Err(PacketError::MissingNul {
                field: "option name"
            })
        ));
        assert!(matches!(
            parse(b"\x00\x01file\x00octet\x00blksize\x00"),
            Err(PacketError::OptionWithoutValue(_))
        ));
        assert!(matches!(
            parse(b"\x00\x01file\x00octet\x00blksize\x00512"),
            Err(PacketError::MissingNul {
                field: "option value"
            })
        ));
    }

    #[test]
    fn wrong_opcodes_are_refused() {
        for op in [0u16, 7, 9, 255, 0xffff] {
            let mut b = op.to_be_bytes().to_vec();
            b.extend_from_slice(b"x\x00octet\x00");
            assert_eq!(parse(&b), Err(PacketError::UnknownOpcode(op)));
        }
    }

    #[test]
    fn bad_fields_are_refused() {
        assert_eq!(
            parse(b"\x00\x01\x00octet\x00"),
            Err(PacketError::EmptyField { field: "filename" })
        );
        assert_eq!(
            parse(b"\x00\x01f\x00binary\x00"),
            Err(PacketError::UnknownMode("binary".into()))
        );
        assert_eq!(
            parse(b"\x00\x01f\xff\x00octet\x00"),
            Err(PacketError::NotText { field: "filename" })
        );
        assert_eq!(
            parse(b"\x00\x01f\nx\x00octet\x00"),
            Err(PacketError::NotText { field: "filename" })
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00\x00\x01a\x00"),
            Err(PacketError::EmptyField {
                field: "option name"
            })
        );
        assert_eq!(
            parse(b"\x00\x04\x00\x01\x00"),
            Err(PacketError::TrailingBytes(1))
        );
    }

    #[test]
    fn oversized_fields_and_option_floods_are_bounded() {
        let mut long = b"\x00\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_FIELD_LEN + 1));
        long.extend_from_slice(b"\x00octet\x00");
        assert_eq!(
            parse(&long),
            Err(PacketError::FieldTooLong {
                field: "filename",
                max: MAX_FIELD_LEN
            })
        );
        let mut flood = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..=MAX_OPTIONS {
            flood.extend_from_slice(format!("o{i}\x001\x00").as_bytes());
        }
        assert_eq!(
            parse(&flood),
            Err(PacketError::TooManyOptions { max: MAX_OPTIONS })
        );
        let mut big_value = b"\x00\x01f\x00octet\x00blksize\x00".to_vec();
        big_value.extend(std::iter::repeat_n(b'9', MAX_FIELD_LEN + 1));
        big_value.push(0);
        assert!(matches!(
            parse(&big_value),
            Err(PacketError::FieldTooLong {
                field: "option value",
                ..
            })
        ));
        let mut big_data = b"\x00\x03\x00\x01".to_vec();
        big_data.extend(std::iter::repeat_n(0u8, MAX_BLKSIZE as usize + 1));
        assert!(matches!(
            parse(&big_data),
            Err(PacketError::DataTooLarge { .. })
        ));
    }

    #[test]
    fn error_messages_from_peers_are_sanitised() {
        let p = parse(b"\x00\x05\x00\x08bad\x07\xff\x00").unwrap();
        let Packet::Error { code, message } = p else {
            panic!()
        };
        assert_eq!(code, ErrorCode::OptionsRefused);
        assert!(!message.chars().any(char::is_control));
    }

    #[test]
    fn invalid_utf8_in_a_long_error_message_still_round_trips() {
        // Regression from fuzz/tftp_packet: 500 invalid bytes became 500 × U+FFFD (1500 bytes),
        // which no longer parsed after re-encoding.
        let mut p = b"\x00\x05\x00\x01".to_vec();
        p.extend(std::iter::repeat_n(0xffu8, MAX_FIELD_LEN));
        p.push(0);
        let packet = parse(&p).unwrap();
        let Packet::Error { message, .. } = &packet else {
            panic!()
        };
        assert!(message.len() <= MAX_FIELD_LEN);
        assert_eq!(parse(&encode(&packet)), Ok(packet.clone()));
    }

    #[test]
    fn encoded_errors_never_contain_inner_nuls() {
        let e = encode_error(ErrorCode::AccessViolation, "a\0b");
        assert_eq!(&e, b"\x00\x05\x00\x02ab\x00");
    }

    mod fuzz {
        //! Bounded randomized runs of the parser (the cargo-fuzz target in fuzz/ runs the same
        //! property unbounded).
        use super::super::*;
        use proptest::prelude::*;

        fn seeds() -> Vec<Vec<u8>> {
            vec![
                b"\x00\x01boot/x64/ipxe.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00".to_vec(),
                b"\x00\x02f\x00netascii\x00".to_vec(),
                b"\x00\x03\x00\x01data".to_vec(),
                b"\x00\x04\xff\xff".to_vec(),
                b"\x00\x05\x00\x08refused\x00".to_vec(),
                b"\x00\x06windowsize\x0016\x00".to_vec(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn mutated_packets_never_panic_and_reencode_stably(
                seed in 0usize..6,
                edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 0..8),
            ) {
                let mut p = seeds()[seed].clone();
                for (pos, byte, kind) in edits {
                    let i = usize::from(pos) % (p.len() + 1);
                    match kind {
                        0 => p.insert(i, byte),
                        1 if i < p.len() => { p.remove(i); }
                        2 if i < p.len() => p[i] = byte,
                        _ => p.truncate(i),
                    }
                }
                if let Ok(packet) = parse(&p) {
                    // Whatever parses must encode to something that parses to the same packet.
                    let again = encode(&packet);
                    prop_assert_eq!(parse(&again), Ok(packet));
                }
            }

            #[test]
            fn huge_option_values_are_bounded(n in 0usize..2000) {
                let mut p = b"\x00\x01f\x00octet\x00blksize\x00".to_vec();
                p.extend(std::iter::repeat_n(b'9', n));
                p.push(0);
                match parse(&p) {
                    Ok(Packet::Rrq(r)) => prop_assert!(r.options[0].value.len() <= MAX_FIELD_LEN),
                    Err(PacketError::FieldTooLong { .. }) => prop_assert!(n > MAX_FIELD_LEN),
                    Err(PacketError::EmptyField { .. }) => prop_assert!(false),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
