//! Windows devices for tests. Until Windows enrollment (MS-MDE2/WSTEP) lands, a test enrolls a
//! device the way enrollment will leave it: a client certificate from the gateway's CA, and an
//! enrollment `windows:<DeviceID>` in state enrolled, bound to that certificate's SHA-256. Only
//! [`Harness::enroll_windows`] knows this; replace its body with a real enrollment later.

use mdm_conformance::windows::{DmIdentity, WindowsDevice};
use mdm_gateway::store::{Enrollment, EnrollmentState};

use crate::{Harness, unix_now};

impl Harness {
    /// `https://localhost:<port>/ManagementServer/MDM.svc`.
    pub fn management_url(&self) -> String {
        format!("{}/ManagementServer/MDM.svc", self.device_url)
    }

    /// A key and client certificate from the gateway's CA for `device_id`, not enrolled.
    pub fn windows_identity(&self, device_id: &str) -> DmIdentity {
        let now = unix_now();
        let (key, cert) = self.issue(device_id, now - 3600, now + 86_400 * 365);
        DmIdentity { device_id: device_id.to_owned(), key, cert }
    }

    /// Stores the enrollment Windows enrollment would create for `identity`.
    pub async fn enroll_windows(&self, identity: &DmIdentity) {
        let id = mdm_core::DeviceId::new(mdm_core::Platform::Windows, &[&identity.device_id]).expect("device id");
        let now = unix_now();
        let mut e = Enrollment::new(id, now);
        e.state = EnrollmentState::Enrolled;
        e.enrolled_at = Some(now);
        e.cert_sha256 = Some(mdm_certs::fingerprint_sha256(&identity.cert));
        self.gateway().state.store.save_enrollment(&e, &[]).await.expect("save enrollment");
    }

    /// An enrolled emulated Windows device.
    pub async fn windows_device(&self, device_id: &str) -> WindowsDevice {
        let identity = self.windows_identity(device_id);
        self.enroll_windows(&identity).await;
        self.windows_device_from(identity)
    }

    /// An emulated device presenting `identity` (enrolled or not).
    pub fn windows_device_from(&self, identity: DmIdentity) -> WindowsDevice {
        WindowsDevice::new(identity, &self.management_url(), &self.ca_pem).expect("windows device")
    }
}
