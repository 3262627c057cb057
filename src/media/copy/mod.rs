//! Copying: the source's own packets passed to the muxer without decoding, once they are known to be whole.

pub mod keycheck;
