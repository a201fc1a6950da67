//! The `hearth` command: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    hearth_node::commands::main()
}
