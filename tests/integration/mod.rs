mod bad_input;
mod codefix;
mod codefix_e2e;
mod llm;
mod manifests;
mod migration;
mod processes;
mod support;
