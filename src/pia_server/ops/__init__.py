"""Operations commands: backup, restore, doctor."""
