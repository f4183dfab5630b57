mod bad_input;
mod codefix;
mod llm;
mod manifests;
mod migration;
mod processes;
mod support;
