# Shared by bin/detect, bin/compile and bin/release so they agree on the document root.
# Prints the document root relative to the app root (`public` or `.`); fails if none.
static_docroot() {
    local build_dir=$1
    # public/ wins: serving it keeps the Procfile and other app files off the web.
    if [ -f "$build_dir/public/index.html" ]; then
        echo "public"
    elif [ -f "$build_dir/index.html" ]; then
        echo "."
    else
        return 1
    fi
}
