//! Which Apple OS a device runs, inferred from its product name.
//!
//! Apple never sends the OS name itself; the product name (`iPhone14,2`, `iPad2,5`,
//! `MacBookPro18,1`, `AppleTV6,2`, `Watch6,1`, `RealityDevice14,1`) names the hardware family,
//! and each family runs one OS. iPads report "iPadOS" from version 13 on, when Apple split it
//! from iOS. This is a best-effort label for inventory, not a capability check.

pub(crate) fn infer(product_name: Option<&str>, model: Option<&str>, os_version: Option<&str>) -> Option<&'static str> {
    let name = product_name.or(model)?;
    let family = |prefix: &str| name.starts_with(prefix);
    if family("iPhone") || family("iPod") {
        Some("iOS")
    } else if family("iPad") {
        let major = os_version.and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
        Some(if major.is_some_and(|m| m < 13) { "iOS" } else { "iPadOS" })
    } else if family("AppleTV") {
        Some("tvOS")
    } else if family("Watch") {
        Some("watchOS")
    } else if family("RealityDevice") {
        Some("visionOS")
    } else if name.contains("Mac") {
        // iMac, Mac14,2, MacBookAir, Macmini, MacPro, VirtualMac2,1 …
        Some("macOS")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::infer;

    #[test]
    fn families() {
        assert_eq!(infer(Some("iPhone14,2"), None, Some("17.1")), Some("iOS"));
        assert_eq!(infer(Some("iPad2,5"), None, Some("9.3.5")), Some("iOS"));
        assert_eq!(infer(Some("iPad13,1"), None, Some("17.0")), Some("iPadOS"));
        assert_eq!(infer(Some("iMac14,2"), None, None), Some("macOS"));
        assert_eq!(infer(None, Some("VirtualMac2,1"), None), Some("macOS"));
        assert_eq!(infer(Some("AppleTV6,2"), None, None), Some("tvOS"));
        assert_eq!(infer(Some("Watch6,1"), None, None), Some("watchOS"));
        assert_eq!(infer(Some("RealityDevice14,1"), None, None), Some("visionOS"));
        assert_eq!(infer(Some("Toaster1,1"), None, None), None);
        assert_eq!(infer(None, None, None), None);
    }
}
