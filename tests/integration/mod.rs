mod bad_input;
mod codefix;
mod manifests;
mod migration;
mod processes;
mod support;
