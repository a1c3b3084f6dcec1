-- What an image classifier saw in a picture (its current version): a JSON array of class names,
-- the likeliest first.
ALTER TABLE files ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
