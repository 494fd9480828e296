//! Windows enrollment (MS-MDE2, MS-XCEP, MS-WSTEP).
