//! The `status` endpoint's report: JSON in the check-in's `Data` (`StatusItems`, `Errors`).
//! Only its outer shape is checked; the items are the backend's to read.

use serde_json::{Map, Value as Json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusReportError {
    #[error("status report has no Data")]
    NoData,
    #[error("status report Data is not JSON: {0}")]
    NotJson(String),
    #[error("status report Data is not a JSON object")]
    NotObject,
}

impl StatusReportError {
    pub fn reason(&self) -> &'static str {
        match self {
            StatusReportError::NoData => "no_status_data",
            StatusReportError::NotJson(_) => "status_not_json",
            StatusReportError::NotObject => "status_not_object",
        }
    }
}

/// The report as a JSON object.
pub fn decode_status_report(data: Option<&[u8]>) -> Result<Map<String, Json>, StatusReportError> {
    let data = data.ok_or(StatusReportError::NoData)?;
    match serde_json::from_slice::<Json>(data) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(StatusReportError::NotObject),
        Err(e) => Err(StatusReportError::NotJson(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let m = decode_status_report(Some(br#"{"StatusItems": {}, "Errors": []}"#)).unwrap();
        assert!(m.contains_key("StatusItems"));
        assert_eq!(decode_status_report(None), Err(StatusReportError::NoData));
        assert_eq!(decode_status_report(Some(b"[1]")), Err(StatusReportError::NotObject));
        assert_eq!(decode_status_report(Some(b"{")).unwrap_err().reason(), "status_not_json");
    }
}
