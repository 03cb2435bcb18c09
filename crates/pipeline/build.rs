// The built-in buildpacks are compiled into the binary (include_dir!); cargo does not
// see such files on its own, so a changed buildpack would otherwise ship stale.
fn main() {
    println!("cargo:rerun-if-changed=../../buildpacks");
}
