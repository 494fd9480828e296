//! Base64 as devices and proxies send it: standard alphabet, padding optional. Does not accept the
//! URL-safe alphabet (neither Apple nor RFC 9440 use it).

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// RFC 8941 §4.2.7: parsers SHOULD NOT fail when "=" padding is missing; Apple always pads, so
/// accepting both costs nothing.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode, ignoring ASCII whitespace anywhere (headers folded or wrapped at 64/76 columns).
pub(crate) fn decode_ignoring_whitespace(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT.decode(compact)
}

/// Decode exactly (no whitespace allowed), for structured-field byte sequences.
pub(crate) fn decode_strict(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    LENIENT.decode(text)
}

/// Standard padded base64, as Apple devices send `Mdm-Signature`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
