//! The SSH exec-command parser sees every byte a client sends as its command: it must
//! never panic, an accepted command always names a valid app and says it again when
//! re-rendered, and every error message is one printable line.
#![no_main]

use libfuzzer_sys::fuzz_target;

use deis_types::command::{parse, GitService};
use deis_types::names;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(command) => {
            let app = command.app.as_str();
            assert_eq!(
                names::AppName::parse(app).as_ref(),
                Ok(&command.app),
                "an accepted command names an app that does not validate"
            );
            let text = std::str::from_utf8(data).expect("accepted commands are UTF-8");
            assert!(text.contains(app), "the app name was not in the command");
            let verb = match command.service {
                GitService::ReceivePack => "git-receive-pack",
                GitService::UploadPack => "git-upload-pack",
            };
            let spaced = verb.replacen('-', " ", 1);
            assert!(
                text.starts_with(verb) || text.starts_with(&spaced),
                "service {:?} from {text:?}",
                command.service
            );
            for rendered in [format!("{verb} '/{app}.git'"), format!("{spaced} {app}")] {
                assert_eq!(parse(rendered.as_bytes()).as_ref(), Ok(&command));
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                !message.chars().any(char::is_control),
                "error message with control characters: {message:?}"
            );
        }
    }
});
