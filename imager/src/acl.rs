//! Security descriptors for what the imager writes into the new Windows: `agent.json` carries
//! the attempt's enrollment credential, so only SYSTEM and Administrators may read it. Files
//! ntfs-3g creates get a permissive default descriptor otherwise; the imager sets this one
//! through ntfs-3g's `system.ntfs_acl` attribute (self-relative SECURITY_DESCRIPTOR bytes).
//!
//! SDDL: `O:SYG:SYD:P(A;FLAGS;FA;;;SY)(A;FLAGS;FA;;;BA)`: owner and group SYSTEM, a protected
//! DACL (nothing inherited from above) allowing full access to SYSTEM and Administrators only.

/// S-1-5-18 (LocalSystem).
const SYSTEM_SID: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
/// S-1-5-32-544 (BUILTIN\Administrators).
const ADMINISTRATORS_SID: [u8; 16] = [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
/// FILE_ALL_ACCESS.
const FILE_ALL_ACCESS: u32 = 0x001F_01FF;
/// OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE: what a directory passes on to what is created
/// in it.
const INHERIT_TO_CHILDREN: u8 = 0x03;
/// SE_SELF_RELATIVE | SE_DACL_PROTECTED | SE_DACL_PRESENT.
const CONTROL: u16 = 0x8000 | 0x1000 | 0x0004;

/// The descriptor for a file (`for_directory` false) or a directory whose new children inherit
/// the same access (`true`).
pub fn system_and_administrators_only(for_directory: bool) -> Vec<u8> {
    let flags = if for_directory {
        INHERIT_TO_CHILDREN
    } else {
        0
    };
    let ace = |sid: &[u8]| {
        let size = (8 + sid.len()) as u16;
        let mut a = vec![0u8 /* ACCESS_ALLOWED_ACE_TYPE */, flags];
        a.extend_from_slice(&size.to_le_bytes());
        a.extend_from_slice(&FILE_ALL_ACCESS.to_le_bytes());
        a.extend_from_slice(sid);
        a
    };
    let aces = [ace(&SYSTEM_SID), ace(&ADMINISTRATORS_SID)].concat();
    let acl_size = (8 + aces.len()) as u16;
    let mut acl = vec![2u8 /* ACL_REVISION */, 0];
    acl.extend_from_slice(&acl_size.to_le_bytes());
    acl.extend_from_slice(&2u16.to_le_bytes());
    acl.extend_from_slice(&0u16.to_le_bytes());
    acl.extend_from_slice(&aces);

    // Header (20 bytes), then the DACL, the owner and the group.
    let dacl_at = 20u32;
    let owner_at = dacl_at + acl.len() as u32;
    let group_at = owner_at + SYSTEM_SID.len() as u32;
    let mut sd = vec![1u8 /* SECURITY_DESCRIPTOR_REVISION */, 0];
    sd.extend_from_slice(&CONTROL.to_le_bytes());
    sd.extend_from_slice(&owner_at.to_le_bytes());
    sd.extend_from_slice(&group_at.to_le_bytes());
    sd.extend_from_slice(&0u32.to_le_bytes()); // no SACL
    sd.extend_from_slice(&dacl_at.to_le_bytes());
    sd.extend_from_slice(&acl);
    sd.extend_from_slice(&SYSTEM_SID);
    sd.extend_from_slice(&SYSTEM_SID);
    sd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptor, byte by byte as Windows lays out O:SYG:SYD:P(A;;FA;;;SY)(A;;FA;;;BA).
    #[test]
    fn the_file_descriptor_is_the_sddl_it_claims() {
        let sd = system_and_administrators_only(false);
        let want: Vec<u8> = [
            &[1, 0, 0x04, 0x90][..],                // revision 1, control SR|PD|DP
            &[72, 0, 0, 0],                         // owner at 72
            &[84, 0, 0, 0],                         // group at 84
            &[0, 0, 0, 0],                          // no SACL
            &[20, 0, 0, 0],                         // DACL at 20
            &[2, 0, 52, 0, 2, 0, 0, 0],             // ACL revision 2, 52 bytes, 2 ACEs
            &[0, 0, 20, 0, 0xff, 0x01, 0x1f, 0x00], // allow, no flags, 20 bytes, FA
            &SYSTEM_SID,
            &[0, 0, 24, 0, 0xff, 0x01, 0x1f, 0x00], // allow, no flags, 24 bytes, FA
            &ADMINISTRATORS_SID,
            &SYSTEM_SID, // owner
            &SYSTEM_SID, // group
        ]
        .concat();
        assert_eq!(sd, want);
        assert_eq!(sd.len(), 96);
    }

    #[test]
    fn a_directory_passes_the_same_access_to_its_children() {
        let sd = system_and_administrators_only(true);
        assert_eq!(sd.len(), 96);
        // Each ACE's flags byte: object and container inherit.
        assert_eq!(sd[28 + 1], 0x03);
        assert_eq!(sd[28 + 20 + 1], 0x03);
        let file = system_and_administrators_only(false);
        let differing: Vec<usize> = (0..96).filter(|i| sd[*i] != file[*i]).collect();
        assert_eq!(differing, [29, 49]);
    }
}
