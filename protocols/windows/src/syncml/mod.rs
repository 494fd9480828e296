//! OMA-DM 1.2 SyncML as MS-MDM uses it.
