while read l; do case "$l" in *reset*) echo '{"prompt": "x"}';; *) echo '{"observation": "", "reward": "a lot", "done": true}';; esac; done
