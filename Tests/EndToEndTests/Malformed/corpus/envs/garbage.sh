while read l; do echo 'hello'; done
