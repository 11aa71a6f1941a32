"""Using a trained character: choosing it, chatting, serving, exporting, pushing and deploying it."""
