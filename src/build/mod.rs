//! Building: the plan (modules x targets x kernels) and the scheduler that runs kbuild.
